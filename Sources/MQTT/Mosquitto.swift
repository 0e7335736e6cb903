// The only file in EdgeFleet that touches libmosquitto. Everything C stays here:
// the handle, the callbacks, properties, and the mapping of return codes to
// `MQTTError`. Callbacks copy what they receive into Swift values and hand it
// to a sink; they never call `mosquitto_*` and are never actor-isolated.

internal import CMosquitto
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Receives what libmosquitto's callbacks report, on the loop thread, while the
/// library holds its callback lock: implementations must only record and return.
protocol MosquittoEventSink: AnyObject, Sendable {
    func mosquittoConnected(sessionPresent: Bool)
    func mosquittoConnectRefused(_ error: MQTTError)
    func mosquittoDisconnected(_ reason: MQTTError?)
    func mosquittoAcknowledged(mid: Int32, result: Result<Void, MQTTError>)
    func mosquittoMessage(_ message: MQTTMessage)
}

/// What the C callbacks get as userdata: a strong reference to the sink,
/// released only after the handle is destroyed.
private final class CallbackContext: Sendable {
    let sink: any MosquittoEventSink
    init(sink: any MosquittoEventSink) { self.sink = sink }
}

/// libmosquitto must be initialised once per process before any handle exists.
private let libraryInitialised: Bool = {
    mosquitto_lib_init()
    return true
}()

/// Owns one `struct mosquitto *`. Created by `make`, destroyed once by `destroy()`
/// (or `deinit`), after which the callback context is released.
///
/// Thread safety: `connect`, `reconnect`, `loop`, `destroy` are called from the
/// client's loop thread only; `publish`, `subscribe`, `unsubscribe` and
/// `disconnect` may be called from any thread (libmosquitto locks internally in
/// threaded mode). `destroy` happens-after every other call (the client's
/// shutdown sequence guarantees it).
final class MosquittoHandle: @unchecked Sendable {
    /// Guarded by `lock`: read-locked by every call into libmosquitto (they may
    /// run concurrently; the library locks internally), write-locked by `destroy`
    /// so that no call can run on a destroyed handle.
    private var pointer: OpaquePointer?
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>
    private let context: Unmanaged<CallbackContext>
    private let protocolVersion: MQTTProtocolVersion
    private let configuration: MQTTConfiguration

    private init(mosq: OpaquePointer, context: Unmanaged<CallbackContext>, configuration: MQTTConfiguration) {
        self.pointer = mosq
        self.context = context
        self.protocolVersion = configuration.protocolVersion
        self.configuration = configuration
        self.lock = .allocate(capacity: 1)
        pthread_rwlock_init(lock, nil)
    }

    deinit {
        destroy()
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Runs `body` with the live handle, or returns `nil` once it is destroyed.
    private func withLive<T>(_ body: (OpaquePointer) -> T) -> T? {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        guard let pointer else { return nil }
        return body(pointer)
    }

    /// Creates and configures a handle; nothing touches the network yet.
    static func make(configuration: MQTTConfiguration, sink: any MosquittoEventSink) throws(MQTTError) -> MosquittoHandle {
        precondition(libraryInitialised)
        try configuration.validate()
        let cleanStart: Bool
        if case .persistent = configuration.session { cleanStart = false } else { cleanStart = true }
        let context = Unmanaged.passRetained(CallbackContext(sink: sink))
        let id: String? = configuration.clientID.isEmpty ? nil : configuration.clientID
        guard let mosq = mosquitto_new(id, cleanStart, context.toOpaque()) else {
            context.release()
            throw MQTTError(mosquittoCode: errno == ENOMEM ? MOSQ_ERR_NOMEM.rawValue : MOSQ_ERR_INVAL.rawValue)
        }
        let handle = MosquittoHandle(mosq: mosq, context: context, configuration: configuration)
        try handle.configure()
        return handle
    }

    /// Runs before the handle is shared with any other thread.
    private func configure() throws(MQTTError) {
        guard let mosq = pointer else { throw .shutdown }
        let config = configuration
        try check(mosquitto_threaded_set(mosq, true))
        try check(
            mosquitto_int_option(
                mosq, MOSQ_OPT_PROTOCOL_VERSION, config.protocolVersion == .v5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311))
        try check(mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, config.tcpNoDelay ? 1 : 0))
        if let receive = config.receiveMaximum {
            try check(mosquitto_int_option(mosq, MOSQ_OPT_RECEIVE_MAXIMUM, Int32(receive)))
        }
        if let send = config.sendMaximum {
            try check(mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, Int32(send)))
        }
        if let username = config.username {
            try check(mosquitto_username_pw_set(mosq, username, config.password))
        }
        if config.broker.usesTLS {
            let tls = config.tls ?? MQTTTLSConfiguration()
            for (what, path) in [("CA file", tls.caFile), ("certificate file", tls.certificateFile), ("key file", tls.keyFile)] {
                if let path, access(path, R_OK) != 0 {
                    throw .tls("cannot read the \(what) '\(path)': \(String(cString: strerror(errno)))")
                }
            }
            let caPath: String? = tls.caFile == nil ? "/etc/ssl/certs" : nil
            try check(mosquitto_tls_set(mosq, tls.caFile, caPath, tls.certificateFile, tls.keyFile, nil))
            try check(mosquitto_tls_insecure_set(mosq, tls.allowHostnameMismatch))
        }
        if let will = config.will {
            try setWill(will)
        }
        mosquitto_connect_v5_callback_set(mosq, onConnect)
        mosquitto_disconnect_v5_callback_set(mosq, onDisconnect)
        mosquitto_publish_v5_callback_set(mosq, onPublish)
        mosquitto_subscribe_v5_callback_set(mosq, onSubscribe)
        mosquitto_unsubscribe_v5_callback_set(mosq, onUnsubscribe)
        mosquitto_message_v5_callback_set(mosq, onMessage)
    }

    /// Replaces the Last Will for the next connection (loop thread, between connections).
    func replaceWill(_ will: LastWill?) -> MQTTError? {
        let result: MQTTError?? = withLive { (mosq: OpaquePointer) -> MQTTError? in
            guard let will else { return code(mosquitto_will_clear(mosq)) }
            do throws(MQTTError) {
                try setWill(will, on: mosq)
                return nil
            } catch {
                return error
            }
        }
        return result ?? .shutdown
    }

    private func setWill(_ will: LastWill) throws(MQTTError) {
        guard let mosq = pointer else { throw .shutdown }
        try setWill(will, on: mosq)
    }

    private func setWill(_ will: LastWill, on mosq: OpaquePointer) throws(MQTTError) {
        guard will.payload.count <= 268_435_455 else { throw .payloadTooLarge }
        var properties: OpaquePointer? = nil
        if protocolVersion == .v5, let delay = will.delayInterval {
            try check(mosquitto_property_add_int32(&properties, prop(MQTT_PROP_WILL_DELAY_INTERVAL), UInt32(clamping: Int64(delay.seconds))))
        }
        let rc = will.payload.withUnsafeBytes { bytes in
            mosquitto_will_set_v5(
                mosq, will.topic, Int32(bytes.count), bytes.baseAddress, Int32(will.qos.rawValue), will.retain, properties)
        }
        if rc != MOSQ_ERR_SUCCESS.rawValue {
            // On failure the library did not take ownership of the list.
            mosquitto_property_free_all(&properties)
            throw MQTTError(mosquittoCode: rc)
        }
    }

    /// First connection: stores host, port and CONNECT properties in the handle
    /// (kept for every `reconnect`), then connects (blocking TCP connect, CONNECT sent).
    func connect() -> MQTTError? {
        withLive { mosq in connect(mosq, to: configuration.broker) } ?? .shutdown
    }

    /// A connection to `broker` (one of the configuration's brokers), stored for later `reconnect`s.
    func connect(to broker: BrokerURL) -> MQTTError? {
        withLive { mosq in connect(mosq, to: broker) } ?? .shutdown
    }

    private func connect(_ mosq: OpaquePointer, to broker: BrokerURL) -> MQTTError? {
        var properties: OpaquePointer? = nil
        defer { mosquitto_property_free_all(&properties) }
        if protocolVersion == .v5, case .persistent(let expiry) = configuration.session {
            let seconds = UInt32(clamping: Int64(expiry.seconds.rounded(.up)))
            if let error = code(mosquitto_property_add_int32(&properties, prop(MQTT_PROP_SESSION_EXPIRY_INTERVAL), seconds)) {
                return error
            }
        }
        let keepAlive = Int32(configuration.keepAlive.seconds)
        return code(
            mosquitto_connect_bind_v5(mosq, broker.host, Int32(broker.port), keepAlive, nil, properties))
    }

    /// Every later connection, with the settings of the first.
    func reconnect() -> MQTTError? {
        withLive { code(mosquitto_reconnect($0)) } ?? .shutdown
    }

    /// Services the socket once: waits up to `timeoutMilliseconds` for traffic
    /// (a publish from another thread wakes it at once), reads, writes, keepalive.
    /// Callbacks run inside this call.
    func loop(timeoutMilliseconds: Int32, wake: LoopWake, handshaking: Bool) -> MQTTError? {
        withLive { mosq in
            // The client's own loop over libmosquitto's external-loop API, instead
            // of mosquitto_loop: libmosquitto wakes mosquitto_loop through an
            // internal socket pair with one byte per queued packet and reads one
            // byte per pass, so a fast publisher costs a select, a read and a recv
            // per message on the loop thread. Here publishers wake the loop through
            // `wake`, at most once per sleep, and one pass writes everything queued.
            let socket = mosquitto_socket(mosq)
            guard socket >= 0 else { return .noConnection }
            wake.willSleep()
            var descriptors = [
                pollfd(fd: socket, events: Int16(POLLIN) | (mosquitto_want_write(mosq) ? Int16(POLLOUT) : 0), revents: 0),
                pollfd(fd: wake.readDescriptor, events: Int16(POLLIN), revents: 0),
            ]
            let ready = poll(&descriptors, 2, timeoutMilliseconds)
            wake.didWake()
            if ready < 0 && errno != EINTR {
                return MQTTError.system(errno: errno, String(cString: strerror(errno)))
            }
            if descriptors[1].revents != 0 { wake.drain() }
            // Before CONNACK a writable socket may be a TLS handshake that wants to
            // write: mosquitto_loop_read is what advances libmosquitto's handshake.
            let readable = descriptors[0].revents & Int16(POLLIN | POLLERR | POLLHUP) != 0
            let handshakeStep = handshaking && descriptors[0].revents & Int16(POLLOUT) != 0
            if readable || handshakeStep {
                if let error = code(mosquitto_loop_read(mosq, 1)) { return error }
            }
            if mosquitto_want_write(mosq), mosquitto_socket(mosq) == socket {
                // libmosquitto sends each queued packet with its own send(); with
                // TCP_NODELAY that is one segment per message. Corking the socket for
                // the write lets the kernel pack them; uncorking flushes at once.
                setCork(socket, true)
                let error = code(mosquitto_loop_write(mosq, 1))
                if mosquitto_socket(mosq) == socket { setCork(socket, false) }
                if let error { return error }
            }
            return code(mosquitto_loop_misc(mosq))
        } ?? .shutdown
    }

    /// Reads one more incoming packet if one is waiting, without a select
    /// (`mosquitto_loop_read`; a socket with nothing to read is not an error).
    func readOnce() -> MQTTError? {
        withLive { code(mosquitto_loop_read($0, 1)) } ?? .shutdown
    }

    /// Sends DISCONNECT (reason 0: the broker discards the Last Will).
    func disconnect() -> MQTTError? {
        withLive { code(mosquitto_disconnect_v5($0, 0, nil)) } ?? .shutdown
    }

    /// Queues a PUBLISH. Returns the message id libmosquitto assigned (0 for
    /// none) and the error, if any. With QoS 1 and `.noConnection` the library
    /// has still queued the message and resends it after the next connect.
    func publish(
        topic: String, payload: UnsafeRawBufferPointer, qos: MQTTQoS, retain: Bool, properties: MQTTPublishProperties
    ) -> (mid: Int32, error: MQTTError?) {
        guard payload.count <= 268_435_455 else { return (0, .payloadTooLarge) }
        var list: OpaquePointer? = nil
        defer { mosquitto_property_free_all(&list) }
        if !properties.isEmpty {
            guard protocolVersion == .v5 else {
                return (0, .notSupported("publish properties need MQTT v5"))
            }
            if let error = Self.build(properties, into: &list) { return (0, error) }
        }
        let properties = list
        return withLive { mosq in
            var mid: Int32 = 0
            let rc = mosquitto_publish_v5(
                mosq, &mid, topic, Int32(payload.count), payload.baseAddress, Int32(qos.rawValue), retain, properties)
            return (mid, code(rc))
        } ?? (0, .shutdown)
    }

    /// Queues a SUBSCRIBE for one filter. Returns the message id and the error, if any.
    func subscribe(filter: String, qos: MQTTQoS) -> (mid: Int32, error: MQTTError?) {
        if let error = Self.checkFilter(filter) { return (0, error) }
        return withLive { mosq in
            var mid: Int32 = 0
            let rc = mosquitto_subscribe_v5(mosq, &mid, filter, Int32(qos.rawValue), 0, nil)
            return (mid, code(rc))
        } ?? (0, .shutdown)
    }

    /// Queues an UNSUBSCRIBE for one filter.
    func unsubscribe(filter: String) -> (mid: Int32, error: MQTTError?) {
        if let error = Self.checkFilter(filter) { return (0, error) }
        return withLive { mosq in
            var mid: Int32 = 0
            let rc = mosquitto_unsubscribe_v5(mosq, &mid, filter, nil)
            return (mid, code(rc))
        } ?? (0, .shutdown)
    }

    /// Destroys the handle, then releases the callback context. Idempotent.
    func destroy() {
        pthread_rwlock_wrlock(lock)
        let mosq = pointer
        pointer = nil
        pthread_rwlock_unlock(lock)
        guard let mosq else { return }
        mosquitto_destroy(mosq)
        context.release()
    }

    static func checkFilter(_ filter: String) -> MQTTError? {
        if filter.isEmpty || filter.utf8.count > 65535 || mosquitto_sub_topic_check(filter) != MOSQ_ERR_SUCCESS.rawValue {
            return .invalidArgument("'\(filter)' is not a valid topic filter")
        }
        return nil
    }

    static func checkTopicName(_ topic: String) -> MQTTError? {
        if topic.isEmpty || topic.utf8.count > 65535 || mosquitto_pub_topic_check(topic) != MOSQ_ERR_SUCCESS.rawValue {
            return .invalidArgument("'\(topic)' is not a valid topic name (empty, or contains + or #)")
        }
        return nil
    }

    /// The version of libmosquitto this process runs with, e.g. "2.0.11".
    static var libraryVersion: String {
        var major: Int32 = 0, minor: Int32 = 0, revision: Int32 = 0
        mosquitto_lib_version(&major, &minor, &revision)
        return "\(major).\(minor).\(revision)"
    }

    private static func build(_ properties: MQTTPublishProperties, into list: inout OpaquePointer?) -> MQTTError? {
        if let expiry = properties.messageExpiry {
            let seconds = UInt32(clamping: Int64(expiry.seconds.rounded(.up)))
            if let e = code(mosquitto_property_add_int32(&list, prop(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL), seconds)) { return e }
        }
        if let contentType = properties.contentType {
            if let e = code(mosquitto_property_add_string(&list, prop(MQTT_PROP_CONTENT_TYPE), contentType)) { return e }
        }
        if let responseTopic = properties.responseTopic {
            if let e = code(mosquitto_property_add_string(&list, prop(MQTT_PROP_RESPONSE_TOPIC), responseTopic)) { return e }
        }
        if let data = properties.correlationData {
            guard data.count <= Int(UInt16.max) else { return .invalidArgument("correlation data over 65535 bytes") }
            let rc = data.withUnsafeBytes {
                mosquitto_property_add_binary(&list, prop(MQTT_PROP_CORRELATION_DATA), $0.baseAddress, UInt16(data.count))
            }
            if let e = code(rc) { return e }
        }
        for pair in properties.userProperties {
            if let e = code(mosquitto_property_add_string_pair(&list, prop(MQTT_PROP_USER_PROPERTY), pair.name, pair.value)) {
                return e
            }
        }
        return nil
    }

    private func check(_ rc: Int32) throws(MQTTError) {
        if let error = code(rc) { throw error }
    }
}

private func prop(_ identifier: mqtt5_property) -> Int32 { Int32(identifier.rawValue) }

/// Lets other threads wake the loop thread out of `poll`, at most once per
/// sleep: a non-blocking pipe and a flag saying whether the loop is (about to be)
/// asleep. The loop sets the flag before it looks at what to poll for, and a
/// waker checks it after queueing its packet, so no wake-up is lost.
final class LoopWake: @unchecked Sendable {
    let readDescriptor: Int32
    private let writeDescriptor: Int32
    private let sleeping = Atomic<Bool>(false)

    init() throws(MQTTError) {
        var descriptors: [Int32] = [-1, -1]
        guard pipe(&descriptors) == 0 else { throw .system(errno: errno, "pipe: \(String(cString: strerror(errno)))") }
        for descriptor in descriptors {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
        readDescriptor = descriptors[0]
        writeDescriptor = descriptors[1]
    }

    deinit {
        close(readDescriptor)
        close(writeDescriptor)
    }

    func willSleep() {
        sleeping.store(true, ordering: .sequentiallyConsistent)
        // libmosquitto reads its queue without our atomics: keep that read after the store (weak memory models).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }
    func didWake() { sleeping.store(false, ordering: .sequentiallyConsistent) }

    /// Wakes the loop if it sleeps (or is about to).
    func wake() {
        if sleeping.exchange(false, ordering: .sequentiallyConsistent) { force() }
    }

    /// Wakes the loop whatever it is doing (for stop requests).
    func force() {
        var byte: UInt8 = 1
        _ = write(writeDescriptor, &byte, 1)
    }

    func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while buffer.withUnsafeMutableBytes({ read(readDescriptor, $0.baseAddress, $0.count) }) > 0 {}
    }
}

private func setCork(_ socket: Int32, _ on: Bool) {
    #if os(Linux)
    var value: Int32 = on ? 1 : 0
    _ = setsockopt(socket, Int32(IPPROTO_TCP), TCP_CORK, &value, socklen_t(MemoryLayout<Int32>.size))
    #endif
}

/// `nil` for success, else the typed error.
private func code(_ rc: Int32) -> MQTTError? {
    rc == MOSQ_ERR_SUCCESS.rawValue ? nil : MQTTError(mosquittoCode: rc)
}

// MARK: - Callbacks (nonisolated, run on the loop thread; copy and leave)

private func sink(_ userdata: UnsafeMutableRawPointer?) -> (any MosquittoEventSink)? {
    guard let userdata else { return nil }
    return Unmanaged<CallbackContext>.fromOpaque(userdata).takeUnretainedValue().sink
}

private func onConnect(_ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ rc: Int32, _ flags: Int32, _ props: OpaquePointer?) {
    guard let sink = sink(userdata) else { return }
    if rc == 0 {
        sink.mosquittoConnected(sessionPresent: flags & 1 == 1)
    } else {
        sink.mosquittoConnectRefused(MQTTError(connackCode: rc))
    }
}

private func onDisconnect(_ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ rc: Int32, _ props: OpaquePointer?) {
    guard let sink = sink(userdata) else { return }
    // 0: our own clean disconnect. >= 128: a v5 DISCONNECT from the broker with
    // that reason code. Otherwise a libmosquitto error code (connection lost...).
    if rc == 0 {
        sink.mosquittoDisconnected(nil)
    } else if rc >= 0x80 {
        sink.mosquittoDisconnected(MQTTError(reasonCode: rc))
    } else {
        sink.mosquittoDisconnected(MQTTError(mosquittoCode: rc))
    }
}

private func onPublish(_ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ mid: Int32, _ reason: Int32, _ props: OpaquePointer?) {
    guard let sink = sink(userdata) else { return }
    // Reason codes below 0x80 are successes (0 success, 16 no matching subscribers).
    sink.mosquittoAcknowledged(mid: mid, result: reason < 0x80 ? .success(()) : .failure(MQTTError(reasonCode: reason)))
}

private func onSubscribe(
    _ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ mid: Int32, _ count: Int32, _ granted: UnsafePointer<Int32>?,
    _ props: OpaquePointer?
) {
    guard let sink = sink(userdata) else { return }
    var result: Result<Void, MQTTError> = .success(())
    if let granted {
        for i in 0..<Int(count) where granted[i] >= 0x80 {
            result = .failure(MQTTError(reasonCode: granted[i]))
            break
        }
    }
    sink.mosquittoAcknowledged(mid: mid, result: result)
}

private func onUnsubscribe(_ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ mid: Int32, _ props: OpaquePointer?) {
    sink(userdata)?.mosquittoAcknowledged(mid: mid, result: .success(()))
}

private func onMessage(
    _ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ message: UnsafePointer<mosquitto_message>?,
    _ props: OpaquePointer?
) {
    guard let sink = sink(userdata), let message else { return }
    let m = message.pointee
    let topic = m.topic.map { String(cString: $0) } ?? ""
    let payload: [UInt8]
    if let bytes = m.payload, m.payloadlen > 0 {
        payload = Array(UnsafeRawBufferPointer(start: bytes, count: Int(m.payloadlen)))
    } else {
        payload = []
    }
    sink.mosquittoMessage(
        MQTTMessage(
            topic: topic, payload: payload, qos: MQTTQoS(rawValue: Int(m.qos)) ?? .atMostOnce, retain: m.retain,
            properties: readPublishProperties(props)))
}

/// Copies the properties of an incoming PUBLISH into Swift values.
private func readPublishProperties(_ list: OpaquePointer?) -> MQTTPublishProperties {
    var result = MQTTPublishProperties()
    var current = list
    while let property = current {
        let identifier = mosquitto_property_identifier(property)
        switch identifier {
        case prop(MQTT_PROP_USER_PROPERTY):
            var name: UnsafeMutablePointer<CChar>? = nil
            var value: UnsafeMutablePointer<CChar>? = nil
            if mosquitto_property_read_string_pair(property, identifier, &name, &value, false) != nil {
                result.userProperties.append(.init(name.map { String(cString: $0) } ?? "", value.map { String(cString: $0) } ?? ""))
            }
            free(name)
            free(value)
        case prop(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL):
            var seconds: UInt32 = 0
            if mosquitto_property_read_int32(property, identifier, &seconds, false) != nil {
                result.messageExpiry = .seconds(Int64(seconds))
            }
        case prop(MQTT_PROP_CONTENT_TYPE), prop(MQTT_PROP_RESPONSE_TOPIC):
            var value: UnsafeMutablePointer<CChar>? = nil
            if mosquitto_property_read_string(property, identifier, &value, false) != nil, let value {
                if identifier == prop(MQTT_PROP_CONTENT_TYPE) {
                    result.contentType = String(cString: value)
                } else {
                    result.responseTopic = String(cString: value)
                }
            }
            free(value)
        case prop(MQTT_PROP_CORRELATION_DATA):
            var value: UnsafeMutableRawPointer? = nil
            var length: UInt16 = 0
            if mosquitto_property_read_binary(property, identifier, &value, &length, false) != nil, let value {
                result.correlationData = Array(UnsafeRawBufferPointer(start: value, count: Int(length)))
            }
            free(value)
        default:
            break
        }
        current = mosquitto_property_next(property)
    }
    return result
}

// MARK: - The one place where C codes become typed errors

extension MQTTError {
    /// Maps a libmosquitto return code (`MOSQ_ERR_*`). Reads `errno` for `MOSQ_ERR_ERRNO`,
    /// so call it right after the failing call, on the same thread.
    init(mosquittoCode rc: Int32) {
        let text = String(cString: mosquitto_strerror(rc))
        switch rc {
        case MOSQ_ERR_NOMEM.rawValue: self = .outOfMemory
        case MOSQ_ERR_PROTOCOL.rawValue, MOSQ_ERR_MALFORMED_PACKET.rawValue, MOSQ_ERR_DUPLICATE_PROPERTY.rawValue,
            MOSQ_ERR_TOPIC_ALIAS_INVALID.rawValue, MOSQ_ERR_MALFORMED_UTF8.rawValue:
            self = .protocolError(text)
        case MOSQ_ERR_INVAL.rawValue: self = .invalidArgument(text)
        case MOSQ_ERR_NO_CONN.rawValue: self = .noConnection
        case MOSQ_ERR_CONN_REFUSED.rawValue: self = .connectionRefused(text)
        case MOSQ_ERR_CONN_LOST.rawValue, MOSQ_ERR_KEEPALIVE.rawValue: self = .connectionLost(text)
        case MOSQ_ERR_TLS.rawValue, MOSQ_ERR_TLS_HANDSHAKE.rawValue, MOSQ_ERR_OCSP.rawValue: self = .tls(text)
        case MOSQ_ERR_PAYLOAD_SIZE.rawValue, MOSQ_ERR_OVERSIZE_PACKET.rawValue: self = .payloadTooLarge
        case MOSQ_ERR_NOT_SUPPORTED.rawValue, MOSQ_ERR_QOS_NOT_SUPPORTED.rawValue, MOSQ_ERR_RETAIN_NOT_SUPPORTED.rawValue:
            self = .notSupported(text)
        case MOSQ_ERR_AUTH.rawValue, MOSQ_ERR_ACL_DENIED.rawValue: self = .notAuthorized(text)
        case MOSQ_ERR_EAI.rawValue, MOSQ_ERR_LOOKUP.rawValue: self = .lookupFailed(text)
        case MOSQ_ERR_TIMEOUT.rawValue: self = .timeout(text)
        case MOSQ_ERR_ADMINISTRATIVE_ACTION.rawValue: self = .connectionLost(text)
        case MOSQ_ERR_ERRNO.rawValue:
            let number = errno
            let message = String(cString: strerror(number))
            switch number {
            case ECONNREFUSED: self = .connectionRefused(message)
            case ECONNRESET, EPIPE, ENOTCONN, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH: self = .connectionLost(message)
            default: self = .system(errno: number, message)
            }
        default: self = .unknown(code: Int(rc), text)
        }
    }

    /// Maps a CONNACK refusal: 1...5 are MQTT 3.1.1 return codes, 128 and up v5 reason codes.
    init(connackCode rc: Int32) {
        if rc >= 0x80 {
            self.init(reasonCode: rc)
            return
        }
        let text = String(cString: mosquitto_connack_string(rc))
        switch rc {
        case 4, 5: self = .notAuthorized(text)
        default: self = .connectionRefused(text)
        }
    }

    /// Maps an MQTT v5 failure reason code (128 and up) from CONNACK, PUBACK, SUBACK or DISCONNECT.
    init(reasonCode rc: Int32) {
        let text = String(cString: mosquitto_reason_string(rc))
        switch rc {
        case Int32(MQTT_RC_BAD_USERNAME_OR_PASSWORD.rawValue), Int32(MQTT_RC_NOT_AUTHORIZED.rawValue),
            Int32(MQTT_RC_BANNED.rawValue), Int32(MQTT_RC_BAD_AUTHENTICATION_METHOD.rawValue):
            self = .notAuthorized(text)
        case Int32(MQTT_RC_MALFORMED_PACKET.rawValue), Int32(MQTT_RC_PROTOCOL_ERROR.rawValue),
            Int32(MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION.rawValue):
            self = .protocolError(text)
        case Int32(MQTT_RC_SERVER_UNAVAILABLE.rawValue), Int32(MQTT_RC_SERVER_BUSY.rawValue),
            Int32(MQTT_RC_CLIENTID_NOT_VALID.rawValue), Int32(MQTT_RC_CONNECTION_RATE_EXCEEDED.rawValue),
            Int32(MQTT_RC_USE_ANOTHER_SERVER.rawValue), Int32(MQTT_RC_SERVER_MOVED.rawValue):
            self = .connectionRefused(text)
        case Int32(MQTT_RC_SERVER_SHUTTING_DOWN.rawValue), Int32(MQTT_RC_KEEP_ALIVE_TIMEOUT.rawValue),
            Int32(MQTT_RC_SESSION_TAKEN_OVER.rawValue), Int32(MQTT_RC_ADMINISTRATIVE_ACTION.rawValue),
            Int32(MQTT_RC_MAXIMUM_CONNECT_TIME.rawValue):
            self = .connectionLost(text)
        case Int32(MQTT_RC_PACKET_TOO_LARGE.rawValue): self = .payloadTooLarge
        case Int32(MQTT_RC_QOS_NOT_SUPPORTED.rawValue), Int32(MQTT_RC_RETAIN_NOT_SUPPORTED.rawValue),
            Int32(MQTT_RC_SHARED_SUBS_NOT_SUPPORTED.rawValue), Int32(MQTT_RC_WILDCARD_SUBS_NOT_SUPPORTED.rawValue),
            Int32(MQTT_RC_SUBSCRIPTION_IDS_NOT_SUPPORTED.rawValue):
            self = .notSupported(text)
        default: self = .rejected(reasonCode: Int(rc), text)
        }
    }
}
