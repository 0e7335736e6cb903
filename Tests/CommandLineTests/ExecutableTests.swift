import Foundation
import TestSupport
import Testing

@Suite("the three executables answer --help and --version and refuse bad flags")
struct ExecutableTests {
    static let names = ["edgefleet-agent", "edgefleet-aggregator", "edgefleet"]

    @Test("--version prints the EdgeFleet version", arguments: names)
    func version(_ name: String) throws {
        let result = try run(try builtProduct(name), ["--version"])
        #expect(result.status == 0)
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0.1.0")
    }

    @Test("--help prints usage and exits 0", arguments: names)
    func help(_ name: String) throws {
        let result = try run(try builtProduct(name), ["--help"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("USAGE: \(name)"))
        #expect(result.stdout.contains("--version"))
    }

    @Test("an unknown flag exits 2 with a message naming it", arguments: names)
    func badFlag(_ name: String) throws {
        let result = try run(try builtProduct(name), ["--no-such-flag"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("--no-such-flag"))
    }

    @Test("running the stubs says plainly that the service is not built yet", arguments: names)
    func stub(_ name: String) throws {
        let result = try run(try builtProduct(name), [])
        #expect(result.status == 2)
        #expect(result.stderr.contains("not part of this build yet"))
    }
}
