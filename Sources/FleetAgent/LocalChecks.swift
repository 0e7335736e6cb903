import Subprocesses
public import FleetCore

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Runs the site's local checks (commands, Nagios exit codes) with a limit on
/// how many run at once, and derives the capabilities they report.
public enum LocalChecks {
    /// Runs `checks` (at most `concurrency` at once) and returns their results in
    /// the order given. A check that cannot start, hangs past its timeout or is
    /// killed by a signal is `unknown`, with the reason as its output.
    public static func run(_ checks: [CheckConfiguration], concurrency: Int, now: @escaping @Sendable () -> Date = { Date() }) async -> [CheckResult] {
        let limit = max(1, concurrency)
        var results = [CheckResult?](repeating: nil, count: checks.count)
        await withTaskGroup(of: (Int, CheckResult).self) { group in
            var next = 0
            func startNext() {
                guard next < checks.count else { return }
                let index = next
                let check = checks[index]
                next += 1
                group.addTask { (index, await runOne(check, now: now)) }
            }
            for _ in 0..<min(limit, checks.count) { startNext() }
            while let (index, result) = await group.next() {
                results[index] = result
                startNext()
            }
        }
        return results.map { $0! }
    }

    static func runOne(_ check: CheckConfiguration, now: @Sendable () -> Date) async -> CheckResult {
        let observedAt = now()
        if check.kind == .arcAgents { return await arcAgents(check, observedAt: observedAt) }
        do {
            let outcome = try await CommandRunner.run(check.command, timeout: check.timeout)
            var output = outcome.firstLine
            if outcome.timedOut {
                output = "timed out after \(DurationFormat.format(check.timeout))" + (output.isEmpty ? "" : "; last output: \(output)")
            } else if let signal = outcome.signal {
                output = "killed by signal \(signal)" + (output.isEmpty ? "" : "; \(output)")
            }
            return CheckResult(
                name: check.name, state: outcome.checkState, observedAt: observedAt,
                durationMs: Int(outcome.duration.milliseconds), output: output)
        } catch {
            return CheckResult(name: check.name, state: .unknown, observedAt: observedAt, durationMs: 0, output: error.description)
        }
    }

    /// The `arc-agents` probe: every deployment in `azure-arc` has all its replicas ready (pass),
    /// some have not (fail, naming them), none is there (fail), kubectl cannot answer (unknown).
    static func arcAgents(_ check: CheckConfiguration, observedAt: Date) async -> CheckResult {
        func result(_ state: CheckState, _ output: String, _ ms: Int = 0) -> CheckResult {
            CheckResult(name: check.name, state: state, observedAt: observedAt, durationMs: ms, output: String(output.prefix(256)))
        }
        let outcome: CommandOutcome
        do {
            outcome = try await CommandRunner.run(check.command, timeout: check.timeout, capture: .head(bytes: 1 << 20))
        } catch {
            return result(.unknown, "kubectl: \(error.description)")
        }
        let ms = Int(outcome.duration.milliseconds)
        if outcome.timedOut { return result(.unknown, "kubectl timed out after \(DurationFormat.format(check.timeout))", ms) }
        guard outcome.exitCode == 0 else {
            let said = outcome.output.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
            return result(.unknown, "kubectl failed (exit \(outcome.exitCode.map(String.init) ?? "-")): \(said)", ms)
        }
        return ArcAgents.reading(outcome.output, name: check.name, observedAt: observedAt, durationMs: ms)
    }

    /// The capabilities the checks report: `true` when the check that sets one passed.
    public static func capabilities(_ checks: [CheckConfiguration], results: [CheckResult]) -> [String: Bool] {
        var capabilities: [String: Bool] = [:]
        for check in checks {
            guard let capability = check.capability else { continue }
            capabilities[capability] = results.first { $0.name == check.name }?.state == .pass
        }
        return capabilities
    }

    /// The certificate reading as a check, so that an unreadable source shows in
    /// the status as a failed check instead of stopping anything.
    public static func certificateCheck(_ reading: CertificateReading, observedAt: Date) -> CheckResult {
        if reading.problems.isEmpty {
            let text = reading.earliestNotAfter.map { "earliest expiry \(RFC3339.format($0))\(reading.source.map { " (\($0))" } ?? "")" }
                ?? "no certificates configured"
            return CheckResult(name: "certificates", state: .pass, observedAt: observedAt, durationMs: 0, output: text)
        }
        let text = reading.problems.joined(separator: "; ")
        return CheckResult(
            name: "certificates", state: .fail, observedAt: observedAt, durationMs: 0,
            output: text.count > 256 ? String(text.prefix(256)) + "…" : text)
    }
}
