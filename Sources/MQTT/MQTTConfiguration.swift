import HostPort
/// The MQTT protocol level spoken to the broker.
public enum MQTTProtocolVersion: Sendable, Hashable {
    /// MQTT 3.1.1.
    case v311
    /// MQTT 5.0 (the default): reason codes, user properties, session and message expiry.
    case v5
}

/// Quality of service for a publish or a subscription.
public enum MQTTQoS: Int, Sendable, Hashable, Comparable, CaseIterable {
    case atMostOnce = 0
    case atLeastOnce = 1
    case exactlyOnce = 2

    public static func < (lhs: MQTTQoS, rhs: MQTTQoS) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Where the broker is: `mqtt://host:port` (plain TCP) or `mqtts://host:port` (TLS).
public struct BrokerURL: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var usesTLS: Bool

    public init(host: String, port: Int, usesTLS: Bool) {
        self.host = host
        self.port = port
        self.usesTLS = usesTLS
    }

    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`; IPv6 hosts go in brackets.
    /// The default port is 1883 for `mqtt` and 8883 for `mqtts`.
    public init(parsing text: String) throws(MQTTError) {
        let scheme: String
        let rest: Substring
        if text.hasPrefix("mqtt://") {
            scheme = "mqtt"
            rest = text.dropFirst("mqtt://".count)
        } else if text.hasPrefix("mqtts://") {
            scheme = "mqtts"
            rest = text.dropFirst("mqtts://".count)
        } else {
            throw .invalidConfiguration("broker URL '\(text)' must start with mqtt:// or mqtts://")
        }
        var authority = rest
        if authority.hasSuffix("/") { authority = authority.dropLast() }
        if authority.contains("/") || authority.contains("@") || authority.contains("?") {
            throw .invalidConfiguration(
                "broker URL '\(text)' must be scheme://host[:port] with no path, user or query")
        }
        let address: HostPort
        do {
            address = try HostPort.parse(String(authority), role: .connect, defaultPort: scheme == "mqtts" ? 8883 : 1883)
        } catch {
            throw .invalidConfiguration("broker URL '\(text)': \(error)")
        }
        let (host, port) = (address.host, address.port)
        self.init(host: String(host), port: port, usesTLS: scheme == "mqtts")
    }

    public var description: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "\(usesTLS ? "mqtts" : "mqtt")://\(h):\(port)"
    }
}

/// TLS settings for an `mqtts://` broker.
public struct MQTTTLSConfiguration: Sendable, Hashable {
    /// PEM file of the CA(s) that signed the broker's certificate. `nil` trusts
    /// the operating system's CA directory (`/etc/ssl/certs`).
    public var caFile: String?
    /// PEM client certificate, for brokers that require one (with `keyFile`).
    public var certificateFile: String?
    /// PEM private key of the client certificate.
    public var keyFile: String?
    /// Skip the check that the broker's certificate names the host. For tests only.
    public var allowHostnameMismatch: Bool

    public init(
        caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil,
        allowHostnameMismatch: Bool = false
    ) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.allowHostnameMismatch = allowHostnameMismatch
    }
}

/// The message the broker publishes for the client when its connection ends
/// without a clean disconnect.
public struct LastWill: Sendable, Hashable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: MQTTQoS
    public var retain: Bool
    /// v5: how long the broker waits before publishing the will (a quick
    /// reconnect within it cancels the will). Ignored with 3.1.1.
    public var delayInterval: Duration?

    public init(
        topic: String, payload: [UInt8], qos: MQTTQoS = .atLeastOnce, retain: Bool = false,
        delayInterval: Duration? = nil
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.delayInterval = delayInterval
    }
}

/// Whether the broker keeps the client's session (subscriptions, queued QoS 1
/// messages) across connections.
public enum MQTTSessionMode: Sendable, Hashable {
    /// Start afresh on every connection; the broker forgets the session at disconnect.
    case cleanStart
    /// Keep the session, for v5 until `expiry` after the disconnect (without an
    /// expiry a v5 broker would end it at disconnect: see the developers' guide).
    /// A client id is required.
    case persistent(expiry: Duration)
}

/// How the client waits between connection attempts: exponential from
/// `initialDelay`, doubling up to `maximumDelay`, with ±`jitter` spread.
public struct ReconnectPolicy: Sendable, Hashable {
    public var initialDelay: Duration
    public var maximumDelay: Duration
    /// Fraction (0...1) by which each delay is spread at random, so that a
    /// fleet does not reconnect in lockstep.
    public var jitter: Double

    public init(initialDelay: Duration = .milliseconds(250), maximumDelay: Duration = .seconds(30), jitter: Double = 0.2) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.jitter = jitter
    }

    /// The delay before attempt number `failures` (1 = after the first failure), without jitter.
    public func baseDelay(afterFailures failures: Int) -> Duration {
        guard failures > 0 else { return .zero }
        let initial = initialDelay.seconds
        let cap = maximumDelay.seconds
        let exponent = min(failures - 1, 30)
        let value = min(cap, initial * Double(1 << exponent))
        return .milliseconds(Int64((value * 1000).rounded()))
    }

    /// The delay before attempt number `failures`, with jitter drawn from `random` (0..<1).
    public func delay(afterFailures failures: Int, random: Double) -> Duration {
        let base = baseDelay(afterFailures: failures).seconds
        let spread = base * jitter * (random * 2 - 1)
        let value = min(maximumDelay.seconds, max(0, base + spread))
        return .milliseconds(Int64((value * 1000).rounded()))
    }
}

/// Everything needed to talk to one broker.
public struct MQTTConfiguration: Sendable {
    public var broker: BrokerURL
    /// Brokers tried in order after `broker` when the one in use fails (the same scheme, TLS
    /// settings and credentials); after a whole round fails, the reconnect backoff applies.
    public var fallbackBrokers: [BrokerURL] = []
    /// `broker` and then `fallbackBrokers`.
    public var brokers: [BrokerURL] { [broker] + fallbackBrokers }
    /// Client identifier; empty lets the broker (clean start only) or the library choose one.
    public var clientID: String
    public var protocolVersion: MQTTProtocolVersion
    public var username: String?
    public var password: String?
    /// TLS settings; used when the broker URL is `mqtts://` (an empty value then trusts the OS CAs).
    public var tls: MQTTTLSConfiguration?
    /// How long one connection attempt waits for the broker's TCP answer before it counts as
    /// failed (and the next broker, if any, is tried).
    public var connectTimeout: Duration = .seconds(10)
    public var keepAlive: Duration
    public var will: LastWill?
    /// Called on the loop thread before every connection attempt; its Last Will
    /// replaces `will` for that connection. For wills that change per connection,
    /// such as the agent's presence carrying the session counter.
    public var willProvider: (@Sendable () -> LastWill?)?
    public var session: MQTTSessionMode
    public var reconnect: ReconnectPolicy
    /// v5 receive maximum announced to the broker: how many QoS 1/2 messages it
    /// may have in flight towards this client. `nil` keeps libmosquitto's default.
    public var receiveMaximum: UInt16?
    /// How many outgoing QoS 1/2 messages may be in flight before the library
    /// queues further ones. `nil` keeps libmosquitto's default (20).
    public var sendMaximum: UInt16?
    /// Disable Nagle's algorithm on the socket (lower latency; on by default).
    public var tcpNoDelay: Bool

    public init(
        broker: BrokerURL,
        clientID: String = "",
        protocolVersion: MQTTProtocolVersion = .v5,
        username: String? = nil,
        password: String? = nil,
        tls: MQTTTLSConfiguration? = nil,
        keepAlive: Duration = .seconds(30),
        will: LastWill? = nil,
        session: MQTTSessionMode = .cleanStart,
        reconnect: ReconnectPolicy = ReconnectPolicy(),
        receiveMaximum: UInt16? = nil,
        sendMaximum: UInt16? = nil,
        tcpNoDelay: Bool = true
    ) {
        self.broker = broker
        self.clientID = clientID
        self.protocolVersion = protocolVersion
        self.username = username
        self.password = password
        self.tls = tls
        self.keepAlive = keepAlive
        self.will = will
        self.willProvider = nil
        self.session = session
        self.reconnect = reconnect
        self.receiveMaximum = receiveMaximum
        self.sendMaximum = sendMaximum
        self.tcpNoDelay = tcpNoDelay
    }

    /// Checks the settings that would only fail later, on the loop thread.
    public func validate() throws(MQTTError) {
        if case .persistent(let expiry) = session {
            if clientID.isEmpty {
                throw .invalidConfiguration("a persistent session needs a client id")
            }
            if expiry <= .zero {
                throw .invalidConfiguration("a persistent session needs a positive session expiry")
            }
        }
        let keepAliveSeconds = keepAlive.seconds
        if keepAliveSeconds < 5 || keepAliveSeconds > 65535 {
            throw .invalidConfiguration("keepalive must be between 5s and 65535s, got \(keepAlive)")
        }
        if password != nil && username == nil {
            throw .invalidConfiguration("a password needs a username")
        }
        if let tls {
            if !broker.usesTLS {
                throw .invalidConfiguration("TLS files are set but the broker URL \(broker) is not mqtts://")
            }
            if (tls.certificateFile == nil) != (tls.keyFile == nil) {
                throw .invalidConfiguration("a client certificate needs both a certificate file and a key file")
            }
        }
        if let will {
            if will.topic.isEmpty || will.topic.contains("+") || will.topic.contains("#") {
                throw .invalidConfiguration("the Last Will topic '\(will.topic)' must be a topic name without wildcards")
            }
        }
        if reconnect.initialDelay <= .zero || reconnect.maximumDelay < reconnect.initialDelay {
            throw .invalidConfiguration("reconnect delays must be positive with maximum >= initial")
        }
        if !(0...1).contains(reconnect.jitter) {
            throw .invalidConfiguration("reconnect jitter must be between 0 and 1")
        }
    }
}

extension Duration {
    /// The duration in seconds as a floating-point number.
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
