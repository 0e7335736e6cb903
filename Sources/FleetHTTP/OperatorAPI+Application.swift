public import HostPort
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
public import Logging
public import ServiceLifecycle

extension OperatorAPI {
    /// The HTTP server as a `Service` for the aggregator's `ServiceGroup`. `listening` is
    /// called with the bound address once it accepts connections (port 0: the one chosen).
    /// With `tls`, it speaks HTTPS only (a plain HTTP request fails the handshake), serving the
    /// certificate the files hold at each connection's handshake.
    public func application(
        address: HostPort, logger: Logger, tls: TLSFiles? = nil, listening: @escaping @Sendable (HostPort) -> Void
    ) throws -> any Service {
        // Idle keep-alive connections are closed after a minute, and slow ones (no request head
        // within the header timeout) at once, with a cap on open connections below the
        // descriptor limit (ConnectionGuard).
        let http1 = HTTPServerBuilder.http1(configuration: .init(additionalChannelHandlers: [connections.handler()], idleTimeout: .seconds(60)))
        return Application(
            router: router(),
            server: try tls.map { try .tls(http1, tlsConfiguration: $0.serverConfiguration()) } ?? http1,
            configuration: ApplicationConfiguration(address: .hostname(address.host, port: address.port), serverName: "edgefleet-aggregator"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? address.port
                listening(HostPort(host: address.host, port: port))
            },
            logger: logger)
    }
}
