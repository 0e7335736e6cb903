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
            let failures = await withTaskGroup(of: String?.self) { group in
                for endpoint in endpoints {
                    group.addTask { await handshake(endpoint, timeout: timeout, caFile: caFile) }
                }
                var failures: [String] = []
                for await failure in group {
                    if let failure { failures.append(failure) }
                }
                return failures
            }
            return ProbeResult(
                reachable: failures.isEmpty && !endpoints.isEmpty, probe: "endpoints",
                detail: failures.isEmpty ? "\(endpoints.count) endpoint(s) answered" : failures.sorted().joined(separator: "; "),
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
