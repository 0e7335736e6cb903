import FleetCore
import Foundation
import Logging
import MQTT
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A broker address that never answers: a loopback listener whose accept queue is full and
/// that never accepts, so the kernel drops further SYNs and a connect waits for its timeout
/// (about two minutes), as with a black-holed address, never an address off this machine.
final class BlackHole {
    let port: Int
    private let listener: Int32
    private var fillers: [Int32] = []

    init() throws {
        (listener, port) = try listenOnLoopback(backlog: 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        for _ in 0..<3 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            fillers.append(fd)
        }
        usleep(200_000)  // the queued handshakes complete (loopback)
    }

    deinit {
        for fd in fillers { close(fd) }
        close(listener)
    }
}

@Suite("the agent and a broker address that never answers")
struct BlackHoleTests {
    /// An agent process and the instant it was spawned.
    struct Started {
        let process: ChildProcess
        let log: String
        let at: ContinuousClock.Instant
    }

    static func start(_ site: String, broker: String, stateDir: String) throws -> Started {
        let log = stateDir + "/\(site).log"
        let at = ContinuousClock.now
        let process = try ChildProcess(
            try builtProduct("edgefleet-agent").path,
            ["--site", site, "--broker", broker, "--state-dir", stateDir + "/" + site, "--probe-command", "true", "--heartbeat-interval", "1s",
             "--log-level", "debug"],
            outputPath: log)
        return Started(process: process, log: log, at: at)
    }

    /// How long from spawning until the agent logged that it started.
    static func startup(_ agent: Started) async throws -> Duration {
        try await withTimeout(.seconds(60), "the agent to start") {
            while (try? String(contentsOfFile: agent.log, encoding: .utf8))?.contains("agent started") != true {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        return ContinuousClock.now - agent.at
    }

    /// SIGTERM, and how long until it exited (and with what).
    static func stop(_ agent: Started) async -> (Int32?, Duration) {
        let stopping = ContinuousClock.now
        agent.process.signal(SIGTERM)
        let status = (try? await offload { agent.process.wait(timeout: .seconds(30)) }) ?? nil
        return (status, ContinuousClock.now - stopping)
    }

    // Each is measured next to an agent whose broker answers, started and stopped at the same
    // moments: on a loaded machine spawning a process alone can take seconds, which says nothing
    // about waiting on the link. The target: within 3 s of that.
    @Test("while the broker address drops every packet: startup as quick as with a broker that answers, shutdown within 3 s of it")
    func startAndStop() async throws {
        let hole = try BlackHole()
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let stateDir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let control = try Self.start("s-control", broker: broker.url, stateDir: stateDir)
        let holed = try Self.start("s-hole", broker: "mqtt://127.0.0.1:\(hole.port)", stateDir: stateDir)
        defer {
            for agent in [control, holed] where agent.process.isRunning {
                agent.process.signal(SIGKILL)
                _ = agent.process.wait()
            }
        }
        async let controlStarted = Self.startup(control)
        async let holeStarted = Self.startup(holed)
        let (controlStartup, holeStartup) = (try await controlStarted, try await holeStarted)
        // Alone both start in well under a second. Under the whole suite on 2 cores spawning took
        // 23-28 s, and the two differed by up to 5 s either way: the bound there is 10 s, still a
        // small part of the two minutes a start that waited for the connect would take.
        #expect(holeStartup < controlStartup + .seconds(10), "startup \(holeStartup), with a broker that answers \(controlStartup)")
        // Its first connect is now stuck in the kernel's SYN retries (about two minutes).
        try await Task.sleep(for: .milliseconds(500))
        async let controlStop = Self.stop(control)
        async let holeStop = Self.stop(holed)
        let ((controlStatus, controlTook), (holeStatus, holeTook)) = await (controlStop, holeStop)
        #expect(controlStatus == 0 && holeStatus == 0, "exits \(String(describing: controlStatus)), \(String(describing: holeStatus))")
        #expect(holeTook < controlTook + .seconds(3), "shutdown \(holeTook), with a broker that answers \(controlTook): \((try? String(contentsOfFile: holed.log, encoding: .utf8))?.suffix(1500) ?? "")")
    }

    @Test("a first broker that never answers and a second that does: the agent gives up on the first after its connect timeout (10 s) and is on the second within 15 s of starting")
    func failoverPastAHole() async throws {
        let hole = try BlackHole()
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let stateDir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let (observer, messages) = try await observe(broker, "edgefleet/v1/sites/s-past-hole/presence")
        let log = stateDir + "/agent.log"
        let agent = try ChildProcess(
            try builtProduct("edgefleet-agent").path,
            ["--site", "s-past-hole", "--broker", "mqtt://127.0.0.1:\(hole.port)", "--broker", broker.url, "--state-dir", stateDir + "/state",
             "--probe-command", "true", "--log-level", "debug"],
            outputPath: log)
        defer {
            if agent.isRunning {
                agent.signal(SIGKILL)
                _ = agent.wait()
            }
        }
        _ = try await Self.startup(Started(process: agent, log: log, at: ContinuousClock.now))
        let startedAt = ContinuousClock.now
        let online = try await messages.next(timeout: .seconds(60), "online on the second broker") {
            (try? FleetJSON.decode(Presence.self, from: $0.payload))?.state == .online
        }
        let took = ContinuousClock.now - startedAt
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(took < .seconds(15), "on the second broker \(took) after starting: \(text.suffix(1500))")
        #expect(text.contains("no answer from 127.0.0.1:\(hole.port)"), "\(text.suffix(1500))")
        #expect(online.topic == "edgefleet/v1/sites/s-past-hole/presence")
        await observer.shutdown()
    }
}
