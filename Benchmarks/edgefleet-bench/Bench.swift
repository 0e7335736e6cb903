import ArgumentParser
import Dispatch
import FleetCore
import Logging
import MQTT
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Measures the MQTT client's end-to-end throughput through a broker: one
/// publisher client, one subscriber client, fixed-size payloads; the clock runs
/// from the first publish to the subscriber's last message.
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edgefleet-bench",
        abstract: "EdgeFleet benchmarks.",
        subcommands: [MQTTThroughput.self, Heartbeats.self, ModeChangeLatency.self, QueueBench.self, HistorySeed.self, HistoryQuery.self, JSONEncodeBench.self])
}

struct MQTTThroughput: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mqtt-throughput",
        abstract: "One publisher, one subscriber, N messages through a broker; prints one JSON line.")

    @Option(help: "Broker URL.") var broker: String = "mqtt://127.0.0.1:1883"
    @Option(help: "Messages to send.") var messages: Int = 200_000
    @Option(help: "Payload size in bytes.") var payload: Int = 200
    @Option(help: "QoS (0 or 1).") var qos: Int = 0
    @Option(help: "QoS 1 publishes awaited concurrently (the publisher's window).") var window: Int = 1000
    @Option(help: "Client send maximum (outgoing QoS 1 in flight); 0 keeps libmosquitto's default of 20.")
    var sendMaximum: Int = 1000
    @Option(help: "Subscriber receive maximum; 0 keeps libmosquitto's default.") var receiveMaximum: Int = 1000
    @Option(help: "Give up after this many seconds.") var timeout: Int = 120
    @Flag(inversion: .prefixedNo, help: "Disable Nagle's algorithm on the clients' sockets.") var tcpNodelay = true

    func run() async throws {
        guard let qos = MQTTQoS(rawValue: qos), qos != .exactlyOnce else { throw ValidationError("--qos must be 0 or 1") }
        var logger = Logger(label: "edgefleet.bench")
        logger.logLevel = .warning
        let url = try BrokerURL(parsing: broker)
        let topic = "bench/\(getpid())/\(UInt32.random(in: 0...UInt32.max))"
        func configuration(_ id: String) -> MQTTConfiguration {
            MQTTConfiguration(
                broker: url, clientID: id, keepAlive: .seconds(60),
                receiveMaximum: receiveMaximum > 0 ? UInt16(receiveMaximum) : nil,
                sendMaximum: sendMaximum > 0 ? UInt16(sendMaximum) : nil, tcpNoDelay: tcpNodelay)
        }
        let subscriber = try MQTTClient(configuration: configuration("bench-sub-\(getpid())"), logger: logger)
        let publisher = try MQTTClient(configuration: configuration("bench-pub-\(getpid())"), logger: logger)
        try await subscriber.connect()
        try await publisher.connect()
        try await subscriber.subscribe(to: topic, qos: qos)

        let expected = messages
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: payload)
        let receiver = Task { () -> (count: Int, end: ContinuousClock.Instant) in
            var count = 0
            for await message in subscriber.messages where message.payload.count == body.count {
                count += 1
                if count == expected { break }
            }
            return (count, ContinuousClock.now)
        }
        let watchdog = Task {
            try await Task.sleep(for: .seconds(timeout))
            receiver.cancel()
            await subscriber.shutdown()
        }

        let start = ContinuousClock.now
        if qos == .atMostOnce {
            for _ in 0..<messages {
                try await publisher.publish(topic, payload: body, qos: .atMostOnce)
            }
        } else {
            let lanes = max(1, min(window, messages))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for lane in 0..<lanes {
                    let share = messages / lanes + (lane < messages % lanes ? 1 : 0)
                    group.addTask {
                        for _ in 0..<share { try await publisher.publish(topic, payload: body, qos: .atLeastOnce) }
                    }
                }
                try await group.waitForAll()
            }
        }
        let published = ContinuousClock.now
        let (received, end) = await receiver.value
        watchdog.cancel()
        let seconds = (end - start).secondsValue
        let publishSeconds = (published - start).secondsValue
        print(
            #"{"client":"edgefleet","qos":\#(qos.rawValue),"messages":\#(messages),"received":\#(received),"payload":\#(payload),"#
                + #""window":\#(window),"sendMaximum":\#(sendMaximum),"seconds":\#(seconds),"publishSeconds":\#(publishSeconds),"#
                + #""messagesPerSecond":\#(Double(received) / seconds),"batches":\#(subscriber.deliveredBatches)}"#)
        await publisher.shutdown()
        await subscriber.shutdown()
        if received < messages { throw ExitCode(1) }
    }
}
