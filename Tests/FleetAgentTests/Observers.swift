import Logging
import MQTT
import TestSupport

/// A quiet client on `broker` subscribed to `filter` at QoS 1, and what it receives.
func observe(_ broker: MosquittoBroker, _ filter: String, connectTimeout: Duration = .seconds(20)) async throws -> (MQTTClient, MessageCollector) {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    let client = try MQTTClient(configuration: MQTTConfiguration(broker: try BrokerURL(parsing: broker.url)), logger: logger)
    let collector = MessageCollector(client)
    try await client.connect(timeout: connectTimeout)
    try await client.subscribe(to: filter, qos: .atLeastOnce)
    return (client, collector)
}
