public import FleetCore
public import MQTT

// The contract's topics over the MQTT client: the topic name and its QoS and retain flag come
// from FleetCore (`FleetTopic.delivery`), never from the caller.

extension TopicDelivery {
    /// The MQTT client's QoS for this delivery.
    public var mqttQoS: MQTTQoS { MQTTQoS(rawValue: qos) ?? .atLeastOnce }
}

extension MQTTClient {
    /// Publishes `payload` on `topic` under `topics`' root, with the contract's QoS and retain flag.
    public func publish(_ topic: FleetTopic, in topics: FleetTopics, payload: [UInt8]) async throws {
        let delivery = topic.delivery
        try await publish(topics.name(topic), payload: payload, qos: delivery.mqttQoS, retain: delivery.retained)
    }

    /// Publishes QoS 1 topics' payloads in the order given, waiting for the acknowledgements
    /// together (see `publishInOrder`); each outcome in the same order.
    public func publishInOrder(_ messages: [(topic: FleetTopic, payload: [UInt8])], in topics: FleetTopics) async -> [(any Error)?] {
        await publishInOrder(messages.map { (topics.name($0.topic), $0.payload, $0.topic.delivery.retained) })
    }

    /// Clears a retained topic (an empty retained message).
    public func clear(_ topic: FleetTopic, in topics: FleetTopics) async throws {
        try await publish(topics.name(topic), payload: [], qos: topic.delivery.mqttQoS, retain: true)
    }
}

extension LastWill {
    /// A Last Will on `topic`, with the contract's QoS and retain flag.
    public init(_ topic: FleetTopic, in topics: FleetTopics, payload: [UInt8]) {
        let delivery = topic.delivery
        self.init(topic: topics.name(topic), payload: payload, qos: delivery.mqttQoS, retain: delivery.retained)
    }
}
