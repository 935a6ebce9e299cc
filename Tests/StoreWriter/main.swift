// lqx-store-writer: a test-only program for the store's durability test. It commits VMs one by
// one to the store given by `--db`, and after each commit returned (the acknowledgement a client
// would get) writes the VM's id and version as one line to stdout, unbuffered. The test kills it
// with SIGKILL mid-stream and checks that every acknowledged write is in the store.
import ControlPlane
import Foundation
import LQXModel
import Logging
import ServiceLifecycle

let arguments = CommandLine.arguments
guard arguments.count == 3, arguments[1] == "--db" else {
    FileHandle.standardError.write(Data("usage: lqx-store-writer --db LOCATION\n".utf8))
    exit(2)
}
var logger = Logger(label: "store-writer")
logger.logLevel = .warning
let location = try StoreLocation(parsing: arguments[2])
let store = try location.open(logger: logger)
try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { try await store.run() }
    var index = 0
    while true {
        let id = VMID.random().rawValue
        let version = try await store.commit([
            .create(StoredObject(kind: .vm, id: id, project: "durability", name: "vm\(index)", body: "{}"))
        ])
        let line = Array("\(id) \(version)\n".utf8)
        _ = line.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        index += 1
    }
}
