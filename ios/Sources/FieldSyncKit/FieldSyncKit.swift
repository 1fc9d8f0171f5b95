// The fieldsync facade for Swift apps: async/await over the generated
// bindings, AsyncStream for sync events and status, and the OS glue
// (BGTaskScheduler, NWPathMonitor) behind small protocols so it can be
// tested with fakes. Logging goes to os_log (subsystem dev.fieldsync) from
// the core itself.

import FieldSync
import Foundation

/// The network as the OS reports it.
public struct NetworkState: Equatable, Sendable {
    /// True when a path with internet access is satisfied.
    public var up: Bool
    /// True on an expensive (cellular, hotspot) or constrained (Low Data Mode) path.
    public var metered: Bool

    public init(up: Bool, metered: Bool) {
        self.up = up
        self.metered = metered
    }

    /// No network.
    public static let down = NetworkState(up: false, metered: false)
}

/// Decides whether sync may start on `network` with the Wi-Fi only choice.
public func networkAllowsSync(_ network: NetworkState, wifiOnly: Bool) -> Bool {
    network.up && !(wifiOnly && network.metered)
}

/// Reports the network (NWPathMonitor on iOS).
public protocol ConnectivityMonitor: AnyObject {
    var state: NetworkState { get }
    var updates: AsyncStream<NetworkState> { get }
}

/// Schedules the background sync task (BGTaskScheduler on iOS).
public protocol BackgroundSyncScheduler: AnyObject {
    func schedule(every interval: TimeInterval, unmeteredOnly: Bool)
    func cancel()
}

/// The fieldsync engine for Swift apps.
public final class FieldSyncClient: @unchecked Sendable {
    /// The generated engine, for calls the facade does not wrap.
    public let engine: Engine

    /// Opens (or creates) the device database; does not touch the network.
    /// For `https://`, `tlsRoots` chooses the certificate authorities trusted
    /// (nil: the system's on Apple platforms) and `tlsExtraRootsPem` adds a
    /// company's own authority (PEM).
    public init(
        databasePath: String, serverUrl: String, token: String, pageSize: Int32 = 1000,
        tlsRoots: TlsRoots? = nil, tlsExtraRootsPem: String? = nil
    ) throws {
        engine = try Engine.open(config: EngineConfig(
            databasePath: databasePath, serverUrl: serverUrl, token: token, pageSize: pageSize,
            tlsRoots: tlsRoots, tlsExtraRootsPem: tlsExtraRootsPem))
    }

    /// Sync now: uploads pending changes, then downloads every table.
    public func syncNow() async throws -> SyncReport { try await engine.syncNow() }

    /// Refresh: uploads pending changes, then downloads only `tables`.
    public func refresh(_ tables: [String]) async throws -> SyncReport { try await engine.refresh(tables: tables) }

    /// Reads a record from the device; throws `FieldSyncError.RecordNotFound` when it is not there.
    public func get(_ table: String, _ id: String) async throws -> Record { try await engine.get(table: table, id: id) }

    /// Updates the record if it is on the device, creates it otherwise.
    public func put(_ table: String, _ id: String, _ fields: [String: Value]) async throws -> Record {
        try await engine.put(table: table, id: id, fields: fields)
    }

    /// Device Status snapshot.
    public func status() async throws -> DeviceStatus { try await engine.status() }

    /// Clears the offline database; throws `FieldSyncError.PendingUploads` unless `force`.
    public func reset(force: Bool = false) async throws -> ResetReport { try await engine.reset(force: force) }

    /// Sync events while iterated; ending the iteration cancels the subscription.
    public func syncEvents() -> AsyncStream<SyncEvent> {
        AsyncStream { continuation in
            let forwarder = EventForwarder { continuation.yield($0) }
            let handle = engine.subscribe(listener: forwarder)
            continuation.onTermination = { _ in handle.cancel() }
        }
    }
}

/// Forwards listener callbacks (on a background thread) to a closure.
final class EventForwarder: SyncEventListener, @unchecked Sendable {
    private let forward: (SyncEvent) -> Void

    init(_ forward: @escaping (SyncEvent) -> Void) {
        self.forward = forward
    }

    func onEvent(event: SyncEvent) {
        forward(event)
    }
}
