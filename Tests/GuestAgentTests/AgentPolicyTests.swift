import AgentProtocol
import Testing

@testable import GuestAgent

@Suite("agent policy file")
struct AgentPolicyTests {
    @Test("an empty file allows everything")
    func empty() throws {
        #expect(try AgentPolicy.parse("") == AgentPolicy())
    }

    @Test("each switch turns one operation off")
    func switches() throws {
        let policy = try AgentPolicy.parse(
            """
            [exec]
            enabled = false
            [files]
            read = true
            write = false
            [power]
            shutdown = false
            """)
        #expect(
            policy == AgentPolicy(allowExec: false, allowFileRead: true, allowFileWrite: false, allowShutdown: false))
    }

    @Test(
        "typos and wrong types are errors, never silently ignored",
        arguments: [
            "[exec]\nenable = false", "[execs]\nenabled = false", "[exec]\nenabled = \"no\"", "exec = false",
            "[files\nread = true", "[exec]\nenabled = true\nenabled = false", "[exec]\n[exec]",
            "[[exec]]\nenabled = true", "[exec]\nenabled = yes", "[exec]\nenabled", "[exec]\nenabled = \"true\"",
            "[exec]\nexec.enabled = true", "[exec]\nenabled = 1",
        ])
    func rejects(text: String) {
        let error = #expect(throws: AgentError.self) { try AgentPolicy.parse(text, source: "agent.toml") }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.hasPrefix("agent.toml") == true)
    }

    @Test("comments, blank lines, CRLF and spacing are accepted")
    func layout() throws {
        let policy = try AgentPolicy.parse(
            "# header\r\n\r\n  [ exec ]  # trailing\r\n\tenabled=false   # off\r\n[power]\nshutdown =  true\n")
        #expect(policy == AgentPolicy(allowExec: false))
    }

    @Test("the sample policy shipped in packaging/ parses to allow-all")
    func packagedSample() throws {
        let path = #filePath.split(separator: "/").dropLast(3).joined(separator: "/")
        let sample = "/" + path + "/packaging/debian/agent.toml"
        #expect(try AgentPolicy.load(path: sample, required: true) == AgentPolicy())
    }

    @Test("errors name the line")
    func lineNumbers() {
        let error = #expect(throws: AgentError.self) {
            try AgentPolicy.parse("[exec]\nenabled = true\n\nbogus = 1", source: "agent.toml")
        }
        #expect(error?.message.hasPrefix("agent.toml:4:") == true)
    }

    @Test("a missing default file means the default policy; a missing explicit file is an error")
    func missingFile() throws {
        #expect(try AgentPolicy.load(path: "/nonexistent/agent.toml", required: false) == AgentPolicy())
        #expect(throws: AgentError.self) { try AgentPolicy.load(path: "/nonexistent/agent.toml", required: true) }
    }

    @Test("os-release parsing handles quotes and comments")
    func osRelease() {
        let parsed = AgentCore.parseOSRelease(
            """
            # comment
            PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
            ID=debian
            VERSION_ID='12'
            """)
        #expect(parsed["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)")
        #expect(parsed["ID"] == "debian")
        #expect(parsed["VERSION_ID"] == "12")
        #expect(parsed["#"] == nil)
    }
}
