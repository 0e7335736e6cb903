/// Everything that can go wrong talking to a broker, as cases a caller can act on.
///
/// Every libmosquitto return code and every MQTT v5 reason code is turned into
/// one of these in a single place (`MQTTError.init(mosquittoCode:)` and
/// `MQTTError.init(reasonCode:)` in `Mosquitto.swift`), so no other code looks
/// at a C integer.
public enum MQTTError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The broker refused the credentials or the client may not do this
    /// (CONNACK 4/5 in 3.1.1, 134/135 in v5, a PUBACK/SUBACK with 135, an ACL denial).
    case notAuthorized(String)
    /// The broker refused the connection for another reason, or nothing listens there.
    case connectionRefused(String)
    /// The client is not connected right now; nothing was queued.
    case noConnection
    /// The connection dropped (keepalive timeout, socket closed, broker went away).
    case connectionLost(String)
    /// TLS could not be set up: handshake failed, certificate not trusted, files unreadable.
    case tls(String)
    /// The payload is larger than MQTT (or the broker's maximum packet size) allows.
    case payloadTooLarge
    /// The peer broke the protocol, or the broker sent a reason code we do not expect.
    case protocolError(String)
    /// An argument was invalid: a topic with wildcards in a publish, an empty filter, a bad QoS.
    case invalidArgument(String)
    /// The broker's host name could not be resolved.
    case lookupFailed(String)
    /// Waiting for the broker took longer than allowed.
    case timeout(String)
    /// The broker or the library does not support the requested feature.
    case notSupported(String)
    /// The broker answered a publish, subscribe or unsubscribe with a failure reason code.
    case rejected(reasonCode: Int, String)
    /// The client was shut down before the operation finished.
    case shutdown
    /// The configuration cannot work (bad URL, missing TLS file, conflicting settings).
    case invalidConfiguration(String)
    /// An operating-system error (errno) underneath libmosquitto.
    case system(errno: Int32, String)
    /// The library ran out of memory.
    case outOfMemory
    /// A code this client does not know.
    case unknown(code: Int, String)

    public var description: String {
        switch self {
        case .notAuthorized(let m): "not authorised: \(m)"
        case .connectionRefused(let m): "connection refused: \(m)"
        case .noConnection: "not connected to the broker"
        case .connectionLost(let m): "connection lost: \(m)"
        case .tls(let m): "TLS failure: \(m)"
        case .payloadTooLarge: "payload too large"
        case .protocolError(let m): "protocol error: \(m)"
        case .invalidArgument(let m): "invalid argument: \(m)"
        case .lookupFailed(let m): "host lookup failed: \(m)"
        case .timeout(let m): "timed out: \(m)"
        case .notSupported(let m): "not supported: \(m)"
        case .rejected(let code, let m): "rejected by the broker (reason \(code)): \(m)"
        case .shutdown: "the MQTT client was shut down"
        case .invalidConfiguration(let m): "invalid MQTT configuration: \(m)"
        case .system(let errno, let m): "system error \(errno): \(m)"
        case .outOfMemory: "out of memory"
        case .unknown(let code, let m): "unknown error \(code): \(m)"
        }
    }

    /// Whether trying the same connection again later can succeed without a
    /// change of configuration (broker down, network gone) as opposed to an
    /// answer that will repeat (wrong password, untrusted certificate).
    public var isTransient: Bool {
        switch self {
        case .connectionRefused, .noConnection, .connectionLost, .lookupFailed, .timeout, .system:
            true
        case .notAuthorized, .tls, .payloadTooLarge, .protocolError, .invalidArgument, .notSupported,
            .rejected, .shutdown, .invalidConfiguration, .outOfMemory, .unknown:
            false
        }
    }
}
