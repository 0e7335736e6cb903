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
    public var username: String?
    public var password: String?
    public var tls: MQTTTLSConfiguration?
}

extension Settings {
    /// `broker`, `username`, `passwordFile`, `caFile`, `certFile`, `keyFile`, validated
    /// together: TLS files need an `mqtts://` URL, a password needs a username, a client
    /// certificate needs its key, and every file must be readable.
    public mutating func brokerSettings(defaultBroker: String = "mqtt://127.0.0.1:1883") throws(ConfigurationError) -> BrokerSettings {
        let brokerText = try string("broker", default: defaultBroker)
        let broker: BrokerURL
        do {
            broker = try BrokerURL(parsing: brokerText)
        } catch {
            throw ConfigurationError(key: "broker", origin: raw("broker")?.1, error.description)
        }
        var password: String?
        if let passwordFile = try string("passwordFile") {
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
        let caFile = try string("caFile")
        let certFile = try string("certFile")
        let keyFile = try string("keyFile")
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
        return BrokerSettings(broker: broker, username: username, password: password, tls: tls)
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
