import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A stand-in for an Azure endpoint: `openssl s_server` on a free loopback port
/// with a certificate for localhost from a test PKI.
public final class StandInEndpoint: @unchecked Sendable {
    public let port: Int
    public let pki: TestPKI
    private var server: ChildProcess?

    public init(pki: TestPKI) throws {
        self.pki = pki
        self.port = try freeLoopbackPort()
        try start()
    }

    public func start() throws {
        let openssl = try executable("openssl")
        server = try ChildProcess(
            openssl.path, ["s_server", "-accept", "127.0.0.1:\(port)", "-cert", pki.serverCertificate, "-key", pki.serverKey, "-www", "-quiet"])
        let deadline = ContinuousClock.now + .seconds(10)
        while !canConnect(port: port) {
            guard ContinuousClock.now < deadline, server?.isRunning == true else { throw TestSupportError("openssl s_server did not start") }
            usleep(10_000)
        }
    }

    public func stop() {
        server?.signal(SIGTERM)
        server?.wait()
        server = nil
    }

    deinit { stop() }
}

/// The real `edgefleet-agent` binary as a subprocess, against a real broker.
public final class AgentProcess: @unchecked Sendable {
    public let process: ChildProcess
    public let log: String

    /// `brokerURL`: instead of the broker's own URL (a proxy in front of it). `--broker` in `extra`
    /// adds a broker to fail over to; it does not replace this one. `logDirectory`: where the
    /// agent's log goes (the state directory unless given: a test that fills that disk needs it
    /// elsewhere, or the lines it waits for cannot be written).
    public init(
        site: String, broker: MosquittoBroker, brokerURL: String? = nil, stateDir: String, probe: [String] = ["--probe-command", "true"],
        extra: [String] = [], logDirectory: String? = nil
    ) throws {
        log = (logDirectory ?? stateDir) + "/agent-\(UUID().uuidString.prefix(6)).log"
        process = try ChildProcess(
            try builtProduct("edgefleet-agent").path,
            ["--site", site, "--broker", brokerURL ?? broker.url, "--state-dir", stateDir, "--heartbeat-interval", "1s", "--probe-interval", "1s",
             "--log-level", "debug"] + probe + extra,
            outputPath: log)
    }

    @discardableResult
    public func terminate() -> Int32 {
        process.signal(SIGTERM)
        return process.wait(timeout: .seconds(10)) ?? { process.signal(SIGKILL); return process.wait() }()
    }

    /// `terminate()` without holding a cooperative thread while the agent shuts down.
    @discardableResult
    public func terminateAndWait() async -> Int32 {
        (try? await offload { [self] in terminate() }) ?? -1
    }

    public func kill() {
        process.signal(SIGKILL)
        process.wait()
    }

    public var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// A test that fails half-way must not leave its agent running.
    deinit {
        if process.isRunning {
            process.signal(SIGKILL)
            process.wait()
        }
    }
}

