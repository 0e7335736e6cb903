public import FleetCore
public import MQTT

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// How a program reaches the broker, as the agent and the aggregator both read it.
public struct BrokerSettings: Sendable {
    public var broker: BrokerURL
    /// `brokers:` (or `--broker` given more than once): the ones after the first, tried in
    /// order when the one in use fails.
    public var fallbacks: [BrokerURL] = []
    public var username: String?
    public var password: String?
    public var tls: MQTTTLSConfiguration?
}

extension Settings {
    /// `broker`, `username`, `passwordFile`, `caFile`, `certFile`, `keyFile`, validated
    /// together: TLS files need an `mqtts://` URL, a password needs a username, a client
    /// certificate needs its key, and every file must be readable.
    public mutating func brokerSettings(defaultBroker: String = "mqtt://127.0.0.1:1883") throws(ConfigurationError) -> BrokerSettings {
        // `broker: URL`, or a list in `brokers:` (or `broker:`), or `--broker` more than once.
        var texts: [String] = []
        var brokerKey = "broker"
        if let (value, origin) = raw("brokers") {
            if raw("broker") != nil { throw ConfigurationError(key: "brokers", origin: origin, "set either broker or brokers, not both") }
            brokerKey = "brokers"
            switch value {
            case .list(let items): texts = items
            case .text(let text): texts = text.split(separator: ",").map { String($0).filter { $0 != " " } }
            case .structured: throw ConfigurationError(key: "brokers", origin: origin, "expected a list of broker URLs")
            }
            if texts.isEmpty { throw ConfigurationError(key: "brokers", origin: origin, "must name at least one broker") }
        } else if let (value, origin) = raw("broker") {
            switch value {
            case .list(let items): texts = items
            case .text(let text): texts = [text]
            case .structured: throw ConfigurationError(key: "broker", origin: origin, "expected a broker URL")
            }
        } else {
            texts = [defaultBroker]
        }
        var urls: [BrokerURL] = []
        for text in texts {
            do {
                urls.append(try BrokerURL(parsing: text))
            } catch {
                throw ConfigurationError(key: brokerKey, origin: raw(brokerKey)?.1, error.description)
            }
        }
        if Set(urls.map(\.usesTLS)).count > 1 {
            throw ConfigurationError(key: brokerKey, origin: raw(brokerKey)?.1, "every broker must use the same scheme (all mqtt:// or all mqtts://)")
        }
        let broker = urls[0]
        var password: String?
        if let passwordFile = try path("passwordFile") {
            guard let text = try? String(contentsOfFile: passwordFile, encoding: .utf8) else {
                throw ConfigurationError(key: "passwordFile", origin: raw("passwordFile")?.1, "cannot read '\(passwordFile)'")
            }
            password = String(text.drop(while: \.isNewline).reversed().drop(while: \.isNewline).reversed())  // a password may hold spaces
        }
        let username = try string("username")
        if password != nil && username == nil {
            throw ConfigurationError(key: "username", origin: nil, "is required when a password file is given")
        }
        var tls: MQTTTLSConfiguration?
        let caFile = try path("caFile")
        let certFile = try path("certFile")
        let keyFile = try path("keyFile")
        for (key, path) in [("caFile", caFile), ("certFile", certFile), ("keyFile", keyFile)] {
            if let path, !FileManager.default.isReadableFile(atPath: path) {
                throw ConfigurationError(key: key, origin: raw(key)?.1, "cannot read '\(path)'")
            }
        }
        if caFile != nil || certFile != nil || keyFile != nil {
            guard broker.usesTLS else {
                throw ConfigurationError(key: "broker", origin: raw("broker")?.1, "TLS files are set, so the broker URL must be mqtts://")
            }
            if (certFile == nil) != (keyFile == nil) {
                throw ConfigurationError(
                    key: certFile == nil ? "certFile" : "keyFile", origin: nil, "a client certificate needs both certFile and keyFile")
            }
            tls = MQTTTLSConfiguration(caFile: caFile, certificateFile: certFile, keyFile: keyFile)
        }
        return BrokerSettings(broker: broker, fallbacks: Array(urls.dropFirst()), username: username, password: password, tls: tls)
    }

    /// `topicRoot`, validated.
    public mutating func topicRoot() throws(ConfigurationError) -> TopicRoot {
        let text = try string("topicRoot", default: TopicRoot.default.rawValue)
        do {
            return try TopicRoot(text)
        } catch {
            throw ConfigurationError(key: "topicRoot", origin: raw("topicRoot")?.1, error.description)
        }
    }
}
