import Glibc

/// Starts a detached POSIX thread running `body`; when no thread can be created, runs `body` on
/// the calling thread rather than lose the work. (Not Foundation's `Thread`, which would link
/// Foundation and ICU into the guest agent.) Used only for work that blocks in the kernel.
public func startDetachedThread(stackSize: Int = 256 << 10, _ body: @escaping @Sendable () -> Void) {
    final class Box: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    pthread_attr_setstacksize(&attributes, stackSize)
    let context = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(
        &thread, &attributes,
        { raw in
            let box = Unmanaged<AnyObject>.fromOpaque(raw!).takeRetainedValue() as! Box
            box.body()
            return nil
        }, context)
    if rc != 0 {
        Unmanaged<AnyObject>.fromOpaque(context).release()
        body()
    }
}

/// The text of an errno value.
public func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }
