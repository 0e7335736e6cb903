public import HostPort
import Hummingbird
public import Logging
public import ServiceLifecycle

extension OperatorAPI {
    /// The HTTP server as a `Service` for the aggregator's `ServiceGroup`. `listening` is
    /// called with the bound address once it accepts connections (port 0: the one chosen).
    public func application(address: HostPort, logger: Logger, listening: @escaping @Sendable (HostPort) -> Void) -> any Service {
        Application(
            router: router(),
            // Idle keep-alive connections are closed after a minute, and slow ones (no request head
            // within the header timeout) at once, with a cap on open connections below the
            // descriptor limit (ConnectionGuard).
            server: .http1(configuration: .init(additionalChannelHandlers: [connections.handler()], idleTimeout: .seconds(60))),
            configuration: ApplicationConfiguration(address: .hostname(address.host, port: address.port), serverName: "edgefleet-aggregator"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? address.port
                listening(HostPort(host: address.host, port: port))
            },
            logger: logger)
    }
}
