public import ServiceLifecycle
public import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The last line of defence against a process that never exits: once its services have
/// stopped (or a graceful shutdown has begun), the process must be gone within a bound, or
/// a supervisor (systemd `Restart=on-failure`, a Kubernetes liveness probe) never restarts
/// it. A thread of its own, not a task or a dispatch queue: whatever holds those up (an
/// `exit()` that deadlocks in an atexit handler while libmosquitto's loop thread holds a
/// lock, a task waiting on a lost connection) does not hold it up.
public enum ExitWatchdog {
    private final class Job {
        let delay: Duration
        let status: Int32
        let message: [UInt8]
        init(delay: Duration, status: Int32, message: String) {
            self.delay = delay
            self.status = status
            self.message = Array(message.utf8)
        }
    }

    /// Ends the process with `status` (`_exit`, no atexit handlers) after `delay`, writing
    /// `reason` to standard error, unless the process has ended by then.
    public static func arm(after delay: Duration, status: Int32, reason: String) {
        let job = Unmanaged.passRetained(Job(delay: delay, status: status, message: "\(reason)\n"))
        var thread = pthread_t()
        let started = pthread_create(&thread, nil, { raw in
            let job = Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue()
            let (seconds, attoseconds) = job.delay.components
            var wait = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
            var left = timespec()
            while nanosleep(&wait, &left) != 0 && errno == EINTR { wait = left }
            _ = job.message.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            _exit(job.status)
        }, job.toOpaque())
        if started == 0 {
            pthread_detach(thread)
        } else {
            job.release()
        }
    }
}

/// A service that waits for the graceful shutdown of its group and then arms the
/// `ExitWatchdog`: if the other services have not finished stopping within `limit`, the
/// process ends with status 1 anyway.
public struct ShutdownWatchdog: Service {
    let limit: Duration
    let program: String

    public init(limit: Duration, program: String) {
        self.limit = limit
        self.program = program
    }

    public func run() async throws {
        do {
            try await gracefulShutdown()
        } catch {
            return  // cancelled: the group is ending anyway
        }
        ExitWatchdog.arm(after: limit, status: 1, reason: "\(program): still running \(limit) after shutdown began; exiting")
    }
}

extension ServiceGroup {
    /// The group of a service executable: `services`, plus a `ShutdownWatchdog` that ends the
    /// process if stopping takes longer than `shutdownLimit`, with graceful shutdown on SIGTERM
    /// and SIGINT. Runs it, and whatever way it ends (done, or an error), arms the watchdog
    /// once more so that the process is gone within seconds.
    public static func runService(
        _ services: [any Service], program: String, shutdownLimit: Duration = .seconds(30), logger: Logger
    ) async throws {
        // Any service ending, by itself or with an error, ends the others gracefully (in reverse
        // order): the queue stops its executors, the core writes its last records.
        var configurations = services.map { service in
            var configuration = ServiceGroupConfiguration.ServiceConfiguration(service: service)
            configuration.successTerminationBehavior = .gracefullyShutdownGroup
            configuration.failureTerminationBehavior = .gracefullyShutdownGroup
            return configuration
        }
        var watchdog = ServiceGroupConfiguration.ServiceConfiguration(service: ShutdownWatchdog(limit: shutdownLimit, program: program))
        watchdog.successTerminationBehavior = .ignore
        configurations.append(watchdog)
        var configuration = ServiceGroupConfiguration(services: configurations, logger: logger)
        configuration.gracefulShutdownSignals = [.sigterm, .sigint]
        let group = ServiceGroup(configuration: configuration)
        do {
            try await group.run()
        } catch {
            ExitWatchdog.arm(after: .seconds(10), status: 1, reason: "\(program): stopped with an error and did not exit; exiting")
            throw error
        }
        ExitWatchdog.arm(after: .seconds(10), status: 0, reason: "\(program): stopped and did not exit within 10 s; exiting")
    }
}
