import Foundation
import Testing

/// The module graph of docs/design-notes.md ("Modules"), checked on the sources' imports: a
/// dependency the design rules out fails here, not in a review.
@Suite("the module graph", .ownThread)
struct ModuleGraphTests {
    static let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Sources")

    /// Each module's imports, and each module's Swift sources.
    static func modules() throws -> [String: (imports: Set<String>, files: [String: String])] {
        var result: [String: (imports: Set<String>, files: [String: String])] = [:]
        for module in try FileManager.default.contentsOfDirectory(atPath: sources.path) {
            guard let enumerator = FileManager.default.enumerator(atPath: sources.appendingPathComponent(module).path) else { continue }
            var imports = Set<String>()
            var files: [String: String] = [:]
            for case let file as String in enumerator where file.hasSuffix(".swift") {
                let text = try String(contentsOf: sources.appendingPathComponent(module).appendingPathComponent(file), encoding: .utf8)
                files[file] = text
                for line in text.split(separator: "\n") {
                    let words = line.split(separator: " ").filter { !$0.hasPrefix("@") && !["public", "internal", "package"].contains($0) }
                    if words.count >= 2, words[0] == "import" { imports.insert(String(words[1])) }
                }
            }
            result[module] = (imports, files)
        }
        return result
    }

    @Test("HTTP is the only importer of Hummingbird and NIO, and reaches the core only through OperatorBackend")
    func httpIsAnEdge() throws {
        let modules = try Self.modules()
        #expect(modules["FleetHTTP"] != nil)
        for (name, module) in modules where name != "FleetHTTP" {
            #expect(module.imports.isDisjoint(with: ["Hummingbird", "NIOHTTPTypes", "Prometheus"]) || name == "edgefleet-aggregator", "\(name)")
            // NIO: the network edges (the HTTP server, PostgreSQL through PostgresNIO, the CLI's HTTPS client).
            #expect(!module.imports.contains("NIOCore") || ["edgefleet-aggregator", "FleetPostgres", "edgefleet"].contains(name), "\(name) imports NIOCore")
            #expect(!module.imports.contains("FleetHTTP") || name == "edgefleet-aggregator", "\(name) imports FleetHTTP")
        }
        #expect(!(modules["FleetHTTP"]?.imports.contains("FleetAggregator") ?? true), "HTTP imports the core")
    }

    @Test("PostgreSQL is an edge: only FleetPostgres imports PostgresNIO, and neither the core nor the queue knows it")
    func postgresIsAnEdge() throws {
        let modules = try Self.modules()
        #expect(modules["FleetPostgres"]?.imports.contains("PostgresNIO") == true)
        for (name, module) in modules where name != "FleetPostgres" {
            #expect(!module.imports.contains("PostgresNIO"), "\(name) imports PostgresNIO")
            #expect(!module.imports.contains("FleetPostgres") || name == "edgefleet-aggregator", "\(name) imports FleetPostgres")
        }
        #expect(modules["FleetPostgres"]?.imports.isDisjoint(with: ["MQTT", "FleetHTTP", "Hummingbird", "GRDB"]) == true)
    }

    @Test("the queue knows nothing of fleet state, MQTT or HTTP; libraries never parse command lines")
    func queueAndLibraries() throws {
        let modules = try Self.modules()
        let queue = try #require(modules["FleetQueue"])
        #expect(queue.imports.isDisjoint(with: ["FleetAggregator", "MQTT", "FleetMessaging", "FleetHTTP", "Hummingbird"]), "\(queue.imports)")
        for library in ["FleetAgent", "FleetAggregator", "FleetQueue", "FleetHTTP", "FleetPostgres", "Subprocesses", "LayeredSettings", "FleetSimulator", "FleetCore"] {
            let imports = try #require(modules[library]).imports
            #expect(imports.isDisjoint(with: ["ArgumentParser", "CommandSupport"]), "\(library) imports \(imports.intersection(["ArgumentParser", "CommandSupport"]))")
        }
    }

    @Test("one subprocess runner and one host:port parser")
    func oneOfEach() throws {
        let modules = try Self.modules()
        for (name, module) in modules {
            for (file, text) in module.files {
                // Every process is started by Subprocesses' spawnProcess.
                if text.contains("posix_spawn(") || text.contains("posix_spawnp(") || text.contains("Process()") {
                    #expect(name == "Subprocesses" && file == "Spawn.swift", "\(name)/\(file) spawns a process itself")
                }
                // Every HOST:PORT is read by HostPort.parse.
                if text.contains("lastIndex(of: \":\")") {
                    #expect(name == "HostPort", "\(name)/\(file) parses a host and port itself")
                }
            }
        }
    }
}
