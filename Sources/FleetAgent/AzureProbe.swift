import FleetCore
import Subprocesses
internal import CTLSProbe
import Dispatch

/// The outcome of one Azure reachability probe.
public struct ProbeResult: Sendable, Hashable {
    public var reachable: Bool
    /// `endpoints` or `command`, as the heartbeat reports it.
    public var probe: String
    /// Why it failed (the first failing endpoint or the command's output), or what answered.
    public var detail: String
    public var duration: Duration
}

/// Tests whether the site reaches Azure, as configured.
public enum AzureProbe {
    public static func run(_ configuration: AzureProbeConfiguration, caFile: String? = nil) async -> ProbeResult {
        let start = ContinuousClock.now
        switch configuration {
        case .endpoints(let endpoints, let timeout):
            // One handshake at a time, stopping at the first that fails: every endpoint must answer,
            // so one failure decides, and a probe takes at most one timeout more than the
            // handshakes that succeeded, as when they ran side by side. Side by side, four TLS
            // contexts and four threads at once raised the agent's peak private memory by about
            // 0.4 MB (docs/design-notes.md, "Memory, stated honestly").
            var failure: String?
            var tried = 0
            for endpoint in endpoints {
                tried += 1
                failure = await handshake(endpoint, timeout: timeout, caFile: caFile)
                if failure != nil { break }
            }
            let untried = endpoints.count - tried
            return ProbeResult(
                reachable: failure == nil && !endpoints.isEmpty, probe: "endpoints",
                detail: failure.map { untried > 0 ? "\($0) (\(untried) more not tried)" : $0 } ?? "\(endpoints.count) endpoint(s) answered",
                duration: ContinuousClock.now - start)
        case .command(let command, let timeout):
            do {
                let outcome = try await CommandRunner.run(command, timeout: timeout)
                let detail: String
                if outcome.timedOut {
                    detail = "timed out after \(timeout)"
                } else if let code = outcome.exitCode {
                    detail = "exit \(code)" + (outcome.firstLine.isEmpty ? "" : ": \(outcome.firstLine)")
                } else {
                    detail = "killed by signal \(outcome.signal ?? 0)"
                }
                return ProbeResult(
                    reachable: outcome.exitCode == 0 && !outcome.timedOut, probe: "command", detail: detail,
                    duration: ContinuousClock.now - start)
            } catch {
                return ProbeResult(reachable: false, probe: "command", detail: error.description, duration: ContinuousClock.now - start)
            }
        }
    }

    /// One endpoint: `nil` when the handshake succeeded, else why not.
    static func handshake(_ endpoint: AzureProbeConfiguration.Endpoint, timeout: Duration, caFile: String?) async -> String? {
        let milliseconds = Int32(clamping: timeout.milliseconds)
        // The handshake blocks (poll with a deadline): run it off the cooperative pool.
        return await withCheckedContinuation { continuation in
            onOwnThread {
                var error = [CChar](repeating: 0, count: 512)
                let rc = edgefleet_tls_probe(endpoint.host, Int32(endpoint.port), milliseconds, caFile, &error, error.count)
                continuation.resume(returning: rc == 0 ? nil : String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
        }
    }
}
