@testable import Subprocesses
import LayeredSettings
import FleetAggregator
@testable import FleetQueue
import FleetCore
import Foundation
import Logging
import MetricsTestKit
import MQTT
import TestSupport
import Testing

@Suite("ingest: every kind of bad input is counted and dropped")
struct IngestDecoderTests {
    let decoder = IngestDecoder(topics: FleetTopics(), maxPayloadBytes: 1024)
    let now = Date()

    func reason(_ topic: String, _ payload: String) -> RejectReason? {
        if case .failure(let rejection) = decoder.decode(topic: topic, payload: Array(payload.utf8), now: now) { return rejection.reason }
        return nil
    }

    static func heartbeat(site: String = "s1", age: String = "12", sentAt: String? = nil, schema: String = "edgefleet.heartbeat/1") -> String {
        """
        {"schema":"\(schema)","site":"\(site)","session":1,"seq":1,"sentAt":"\(sentAt ?? RFC3339.format(Date()))",\
        "azure":{"reachable":true,"lastContactAgeS":\(age),"probe":"endpoints"}}
        """
    }

    @Test func goodInputPasses() {
        #expect(reason("edgefleet/v1/sites/s1/heartbeat", Self.heartbeat()) == nil)
        #expect(reason("edgefleet/v1/sites/s1/heartbeat", Self.heartbeat(age: "null")) == nil)
    }

    @Test func eachBadInputHasItsReason() {
        let t = "edgefleet/v1/sites/s1/heartbeat"
        #expect(reason(t, "{not json") == .malformedJSON)
        #expect(reason(t, "[1, 2]") == .malformedJSON)
        #expect(reason(t, Self.heartbeat(schema: "edgefleet.heartbeat/2")) == .unknownSchema)
        #expect(reason(t, #"{"site":"s1"}"#) == .unknownSchema)
        #expect(reason(t, #"{"schema":"edgefleet.heartbeat/1","site":"s1"}"#) == .invalidPayload)
        #expect(reason(t, Self.heartbeat(site: "s2")) == .siteMismatch)
        #expect(reason(t, Self.heartbeat(site: "NOT/valid")) == .siteMismatch)
        #expect(reason("edgefleet/v1/sites/Bad_Site/heartbeat", Self.heartbeat()) == .invalidSiteID)
        #expect(reason("edgefleet/v1/sites/s1/gossip", Self.heartbeat()) == .unknownTopic)
        #expect(reason(t, String(repeating: " ", count: 1025)) == .tooLarge)
        #expect(reason(t, Self.heartbeat(age: "-1")) == .negativeAge)
        #expect(reason(t, Self.heartbeat(age: "1e12")) == .absurdTimestamp)
        #expect(reason(t, Self.heartbeat(sentAt: "1970-01-01T00:00:00.000Z")) == .absurdTimestamp)
        #expect(reason(t, Self.heartbeat(sentAt: "2999-01-01T00:00:00.000Z")) == .absurdTimestamp)
        #expect(reason(t, Self.heartbeat(sentAt: "yesterday")) == .invalidPayload)
    }
}

@Suite("the aggregator service in-process: bad input never stops ingest", .timeLimit(.minutes(1)))
struct AggregatorServiceTests {
    /// The in-process service logs errors only.
    static var quietLogger: Logger {
        var logger = Logger(label: "aggregator")
        logger.logLevel = .error
        return logger
    }

    @Test("every kind of bad input is rejected and counted; good sites are still answered correctly")
    func badInputDoesNotStopIngest() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let directory = try temporaryDirectory("edgefleet-aggregator")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let metrics = TestMetrics()
        let logger = Self.quietLogger
        var mqtt = MQTTConfiguration(broker: try BrokerURL(parsing: broker.url), clientID: "aggregator-under-test")
        mqtt.keepAlive = .seconds(30)
        var thresholds = Thresholds()
        thresholds.connectedWithin = .seconds(2)
        thresholds.budget = .seconds(12)
        thresholds.warnBefore = .seconds(8)
        thresholds.criticalBefore = .seconds(4)
        let configuration = AggregatorConfiguration(
            mqtt: mqtt, databasePath: directory + "/fleet.sqlite", thresholds: thresholds, viewRefresh: .seconds(1),
            summaryInterval: .milliseconds(200), flushInterval: .milliseconds(200), maxPayloadBytes: 2048)
        let service = try AggregatorService(configuration: configuration, logger: logger, metrics: AggregatorMetrics(factory: metrics))
        let (observer, messages) = try await fleetObserver(broker)
        let running = Task { try await service.run() }
        try await messages.aggregatorOnline()

        let sender = try MQTTClient(configuration: MQTTConfiguration(broker: try BrokerURL(parsing: broker.url), clientID: "bad-sender"), logger: logger)
        try await sender.connect()
        let t = "edgefleet/v1/sites/s1/heartbeat"
        let bad: [(String, String, RejectReason)] = [
            (t, "{not json", .malformedJSON),
            (t, IngestDecoderTests.heartbeat(site: "s1", schema: "edgefleet.heartbeat/9"), .unknownSchema),
            (t, #"{"schema":"edgefleet.heartbeat/1","site":"s1"}"#, .invalidPayload),
            (t, IngestDecoderTests.heartbeat(site: "s2"), .siteMismatch),
            ("edgefleet/v1/sites/Bad_Site/heartbeat", IngestDecoderTests.heartbeat(), .invalidSiteID),
            (t, String(repeating: "x", count: 4096), .tooLarge),
            (t, IngestDecoderTests.heartbeat(age: "-5"), .negativeAge),
            (t, IngestDecoderTests.heartbeat(sentAt: "1999-12-31T23:59:59.000Z"), .absurdTimestamp),
        ]
        for (topic, payload, _) in bad {
            try await sender.publish(topic, string: payload, qos: .atLeastOnce)
        }
        // A good site after all of that is answered as it should be.
        let good = try SimulatedSite("good-site", brokerURL: broker.url)
        try await good.connect()
        good.startBeating()  // beating, so it is online whenever the (possibly late) evaluation runs
        defer { good.stopBeating() }
        let view = try await messages.view("good-site", "the good site's view") { $0.mode == .connected && $0.liveness == .online }
        #expect(view.deadlineReason == .budget)
        for (_, _, reason) in bad {
            let counter = try metrics.expectCounter("edgefleet_messages_rejected_total", [("reason", reason.rawValue)])
            #expect(counter.totalValue == 1, "\(reason)")
        }
        #expect(try metrics.expectCounter("edgefleet_messages_ingested_total", [("channel", "heartbeat")]).totalValue >= 1)
        // s1 never sent anything valid, so it is not a site.
        #expect(service.view(of: try SiteID("s1")) == nil)
        #expect(service.summary().sites == 1)

        running.cancel()
        try await running.value
        await good.shutdown()
        await sender.shutdown()
        await observer.shutdown()
    }

    @Test("the service reads the wall clock it is given: ten days ahead, a connected site's deadline is ten days later")
    func clockIsAParameter() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let directory = try temporaryDirectory("edgefleet-aggregator")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let logger = Self.quietLogger
        let configuration = AggregatorConfiguration(
            mqtt: MQTTConfiguration(broker: try BrokerURL(parsing: broker.url), clientID: "aggregator-clock"),
            databasePath: directory + "/fleet.sqlite", viewRefresh: .seconds(1), summaryInterval: .milliseconds(200),
            flushInterval: .milliseconds(200))
        let ahead: TimeInterval = 10 * 86_400
        let service = try AggregatorService(configuration: configuration, logger: logger, clock: .offset(by: ahead))
        let (observer, messages) = try await fleetObserver(broker)
        let running = Task { try await service.run() }
        try await messages.aggregatorOnline()
        let site = try SimulatedSite("clock-site", brokerURL: broker.url)
        try await site.connect()
        site.startBeating()
        defer { site.stopBeating() }
        let view = try await messages.view("clock-site", "the site's view") { $0.mode == .connected }
        // The budget (30 days) runs from the contact the aggregator saw, at its own (shifted) time.
        let expected = Date().addingTimeInterval(ahead + 30 * 86_400)
        #expect(abs((view.deadline ?? .distantPast).timeIntervalSince(expected)) < 120, "\(view.deadline) vs \(expected)")
        #expect(abs(service.summary().at.timeIntervalSince(Date().addingTimeInterval(ahead))) < 60)
        running.cancel()
        try await running.value
        await site.shutdown()
        await observer.shutdown()
    }

    @Test("site records survive a restart of the service (SQLite, WAL)")
    func recordsSurvive() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let directory = try temporaryDirectory("edgefleet-aggregator")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let logger = Self.quietLogger
        let configuration = AggregatorConfiguration(
            mqtt: MQTTConfiguration(broker: try BrokerURL(parsing: broker.url), clientID: "aggregator-under-test"),
            databasePath: directory + "/fleet.sqlite", flushInterval: .milliseconds(100))
        let (observer, messages) = try await fleetObserver(broker)
        let first = try AggregatorService(configuration: configuration, logger: logger)
        let running = Task { try await first.run() }
        try await messages.aggregatorOnline()
        let site = try SimulatedSite("kept", brokerURL: broker.url)
        try await site.connect()
        try await site.heartbeat()
        _ = try await messages.view("kept", "the site's view") { $0.mode == .connected }
        running.cancel()
        try await running.value  // flushes on the way out

        let second = try AggregatorService(configuration: configuration, logger: logger)
        let again = Task { try await second.run() }
        try await withTimeout(.seconds(10), "the restored site") {
            while second.view(of: try SiteID("kept")) == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(second.view(of: try SiteID("kept"))?.mode == .connected)
        again.cancel()
        try await again.value
        await site.shutdown()
        await observer.shutdown()
    }
}
