import Foundation
import LQXModel
import Testing

@Suite("labels, identifiers, node spec, addresses, errors")
struct ModelTests {
    @Test(
        "label keys match ^[a-z][a-z0-9-]*$; values are short and plain",
        arguments: [
            ("env", "prod", true), ("a1-b", "", true), ("Env", "x", false), ("1a", "x", false), ("a_b", "x", false),
            ("", "x", false), ("ok", "a b", false), ("ok", "v1.2_x-Y", true),
            (String(repeating: "a", count: 64), "x", false), ("ok", String(repeating: "v", count: 64), false),
        ])
    func labels(key: String, value: String, valid: Bool) {
        let labels = try? Labels([key: value])
        #expect((labels != nil) == valid)
        if !valid {
            do { _ = try Labels([key: value], field: "metadata.labels") } catch {
                #expect(error.code == .invalidSpec)
                #expect(error.message.hasPrefix("metadata.labels"))
            }
        }
    }

    @Test("selectors match subsets; decoding validates")
    func selectors() throws {
        let labels: Labels = ["env": "prod", "zone": "a"]
        #expect(labels.matches(["env": "prod"]))
        #expect(labels.matches([:]))
        #expect(!labels.matches(["env": "dev"]))
        #expect(!labels.matches(["rack": "1"]))
        #expect(try JSONDecoder().decode(Labels.self, from: JSONEncoder().encode(labels)) == labels)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(Labels.self, from: Data(#"{"Bad":"x"}"#.utf8)) }
        #expect(throws: LQXError.self) { try Labels((0...64).reduce(into: [:]) { $0["k\($1)"] = "v" }) }
    }

    @Test("VM ids: random v4 UUIDs, parsed case-insensitively, stored lowercase")
    func ids() throws {
        var seen = Set<VMID>()
        for _ in 0..<100 {
            let id = VMID.random()
            #expect(seen.insert(id).inserted)
            #expect(UUID(uuidString: id.rawValue) != nil)
            #expect(Array(id.rawValue.utf8)[14] == UInt8(ascii: "4"))
        }
        #expect(VMID("6F1C0D5E-8A8E-4C39-9C1E-5B9F7D1A2B3C")?.rawValue == "6f1c0d5e-8a8e-4c39-9c1e-5b9f7d1a2b3c")
        for bad in ["", "6f1c0d5e8a8e4c399c1e5b9f7d1a2b3c", "6f1c0d5e-8a8e-4c39-9c1e-5b9f7d1a2b3g", "x"] {
            #expect(VMID(bad) == nil)
        }
        #expect(throws: LQXError.self) { try VMID(validating: "nope", field: "vm.id") }
        var a = SystemRandomNumberGenerator()
        _ = VMID.random(using: &a)
    }

    @Test("node specs: taints, overcommit and roles are checked")
    func nodeSpec() {
        #expect(throws: Never.self) { try NodeSpec().validate() }
        let bad: [(NodeSpec, String)] = [
            (NodeSpec(taints: [.init(key: "Bad", effect: .noSchedule)]), "taints[0]"),
            (
                NodeSpec(taints: [.init(key: "a", effect: .noSchedule), .init(key: "a", effect: .noSchedule)]),
                "listed twice"
            ),
            (NodeSpec(cpuOvercommit: 0.5), "cpu_overcommit"),
            (NodeSpec(memoryOvercommit: .nan), "memory_overcommit"),
            (NodeSpec(reservedCPUs: -1), "reserved_cpus"),
            (NodeSpec(roles: []), "roles"),
        ]
        for (spec, expected) in bad {
            do {
                try spec.validate()
                Issue.record("\(expected): accepted")
            } catch {
                #expect(error.message.contains(expected))
            }
        }
    }

    @Test(
        "addresses: one parser; port 0 and an empty host only for listeners",
        arguments: [
            ("127.0.0.1:7443", HostPort.Use.listen, "127.0.0.1:7443"), (":0", .listen, "0.0.0.0:0"),
            ("[::1]:80", .listen, "[::1]:80"), ("node-1.lan:7443", .connect, "node-1.lan:7443"),
            ("[fe80::1%eth0]:1", .connect, "[fe80::1%eth0]:1"), ("127.0.0.1:0", .connect, nil),
            (":7443", .connect, nil), ("host", .listen, nil), ("host:", .listen, nil), ("host:65536", .listen, nil),
            ("::1:80", .connect, nil), ("[::1]80", .connect, nil), ("[127.0.0.1]:80", .connect, nil),
            ("host:+1", .connect, nil), ("a b:1", .connect, nil),
        ] as [(String, HostPort.Use, String?)])
    func addresses(text: String, use: HostPort.Use, expected: String?) {
        let parsed = try? HostPort(parsing: text, for: use, field: "--listen")
        #expect(parsed?.description == expected, "\(text)")
        if expected == nil {
            do { _ = try HostPort(parsing: text, for: use, field: "--node") } catch {
                #expect(error.message.hasPrefix("--node \(text.debugDescription)"))
            }
        }
    }

    @Test("errors: open codes, a cause kept apart from the message")
    func errors() {
        struct Low: Error, CustomStringConvertible { var description: String { "ENOSPC" } }
        let error = LQXError(.io, "cannot write /x", cause: Low())
        #expect(error.message == "cannot write /x")
        #expect(error.fullMessage == "cannot write /x: ENOSPC")
        #expect(error.description == "cannot write /x: ENOSPC [io]")
        let wrapped = LQXError(.hypervisor, "create web", cause: error)
        #expect(wrapped.fullMessage == "create web: cannot write /x: ENOSPC")
        #expect(LQXError.Code(rawValue: "new_code") != .internal)
        #expect(LQXError(.io, "a") == LQXError(.io, "a", cause: Low()))
    }
}
