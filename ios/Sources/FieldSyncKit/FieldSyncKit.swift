// The fieldsync facade for Swift apps: async/await over the generated
// bindings, AsyncStream for sync events, status and observed queries, and the OS glue
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
    /// company's own authority (PEM). `encryptionKey` (32 bytes, kept in the
    /// Keychain) encrypts the database (SQLCipher); nil keeps it plain. A key
    /// that does not open the database throws `FieldSyncError.WrongKey` and
    /// changes nothing.
    public init(
        databasePath: String, serverUrl: String, token: String, pageSize: Int32 = 1000,
        tlsRoots: TlsRoots? = nil, tlsExtraRootsPem: String? = nil, encryptionKey: Data? = nil
    ) throws {
        engine = try Engine.open(config: EngineConfig(
            databasePath: databasePath, serverUrl: serverUrl, token: token, pageSize: pageSize,
            tlsRoots: tlsRoots, tlsExtraRootsPem: tlsExtraRootsPem, app: nil,
            encryptionKey: encryptionKey))
    }

    /// Changes the key of the closed database at `databasePath` from
    /// `currentKey` to `newKey` (nil: not encrypted), keeping everything in it,
    /// pending uploads included. Close every client on it first; a wrong
    /// `currentKey` throws `FieldSyncError.WrongKey` and changes nothing.
    public static func changeDatabaseKey(
        databasePath: String, currentKey: Data?, newKey: Data?
    ) async throws {
        try await rekeyDatabase(databasePath: databasePath, currentKey: currentKey, newKey: newKey)
    }

    /// Sync now: uploads pending changes, then downloads every table.
    public func syncNow() async throws -> SyncReport { try await engine.syncNow() }

    /// Refresh: downloads `table` and the tables that depend on it, always, with a
    /// Refresh notification among the sync events.
    public func refresh(_ table: String) async throws -> SyncReport { try await engine.refresh(table: table) }

    /// Uploads pending changes, then downloads only `tables` (no notification).
    public func syncTables(_ tables: [String]) async throws -> SyncReport { try await engine.syncTables(tables: tables) }

    // MARK: The sync service (the core decides; the app reports and renders)

    /// Starts the core's sync service: it syncs due tables by itself.
    public func start() throws { try engine.start() }

    /// Stops the sync service.
    public func stop() { engine.stop() }

    /// The app came to the foreground (true) or went to the background.
    public func setAppActive(_ active: Bool) { engine.setAppActive(active: active) }

    /// The OS network changed (NWPathMonitor: `isExpensive` is metered).
    public func setNetwork(connected: Bool, metered: Bool, type: NetworkType) {
        engine.setOsNetwork(network: OsNetwork(connected: connected, metered: metered, networkType: type))
    }

    /// One scheduler step now (a BGTask): runs what is due, if anything.
    public func runDue() async throws -> ScheduledSync? { try await engine.runDue() }

    /// The sync settings, kept in the device database.
    public var settings: SyncSettings { engine.settings() }

    /// Changes the sync settings.
    public func setSettings(_ settings: SyncSettings) throws { try engine.setSettings(settings: settings) }

    /// The sync status now.
    public func syncStatus() async throws -> SyncStatus { try await engine.syncStatus() }

    /// Replaces the bearer token (kept in memory only).
    public func setToken(_ token: String) throws { try engine.setToken(token: token) }

    /// Reads a record from the device; throws `FieldSyncError.RecordNotFound` when it is not there.
    public func get(_ table: String, _ id: String) async throws -> Record { try await engine.get(table: table, id: id) }

    /// Updates the record if it is on the device, creates it otherwise.
    public func put(_ table: String, _ id: String, _ fields: [String: Value]) async throws -> Record {
        try await engine.put(table: table, id: id, fields: fields)
    }

    /// Changes the given fields of a record on the device; throws `FieldSyncError.RecordNotFound`
    /// when it is not there.
    public func update(_ table: String, _ id: String, _ fields: [String: Value]) async throws -> Record {
        try await engine.update(table: table, id: id, fields: fields)
    }

    /// Deletes a record on the device and queues the deletion.
    public func delete(_ table: String, _ id: String) async throws {
        try await engine.delete(table: table, id: id)
    }

    // MARK: Local queries, observation and transactions

    /// The records of `table` on the device that `where` selects (a condition as filter
    /// JSON, the profile's filter language: `{"op": "eq", "column": "status", "value":
    /// "open"}`, relative dates and "current user" included; nil: every row), ordered by
    /// `orderBy` (the primary key breaks ties), `offset` rows skipped, at most `limit`.
    /// A condition on a column the table does not sync throws `FieldSyncError.InvalidInput`.
    public func query(
        _ table: String, where condition: String? = nil, orderBy: [QueryOrder] = [],
        limit: UInt32? = nil, offset: UInt32 = 0
    ) async throws -> [Record] {
        try await engine.query(query: Query(
            table: table, condition: condition, order: orderBy, limit: limit, offset: offset))
    }

    /// How many records of `table` on the device `where` selects.
    public func count(_ table: String, where condition: String? = nil) async throws -> UInt64 {
        try await engine.count(query: Query(
            table: table, condition: condition, order: [], limit: nil, offset: 0))
    }

    /// The records a `query` selects, at once and again after each local write or sync
    /// that changes `table` (once per commit, never for other tables), while iterated;
    /// ending the iteration cancels the observation. When the table leaves the device
    /// (dropped from the offline profile, or a reset) it yields an empty list and goes
    /// on. A query that cannot run ends the stream with its `FieldSyncError`.
    public func observe(
        _ table: String, where condition: String? = nil, orderBy: [QueryOrder] = [],
        limit: UInt32? = nil, offset: UInt32 = 0
    ) -> AsyncThrowingStream<[Record], Error> {
        AsyncThrowingStream(bufferingPolicy: .unbounded) { continuation in
            let forwarder = QueryForwarder(
                onResult: { continuation.yield($0) },
                onError: { continuation.finish(throwing: $0) })
            do {
                let handle = try engine.observe(
                    query: Query(
                        table: table, condition: condition, order: orderBy, limit: limit,
                        offset: offset),
                    listener: forwarder)
                continuation.onTermination = { _ in handle.cancel() }
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }

    /// Applies `writes` in order as one transaction: on the device all of them commit
    /// together or none does (the first failing write throws and nothing is kept), and
    /// the next sync uploads them as one unit that the server applies whole or not at
    /// all. If the server refuses one (or, with conflict detection on, one conflicts),
    /// none is applied, each shows as a sync error and the device takes the server's rows
    /// back. Returns each write's record (nil for a delete).
    @discardableResult
    public func transaction(_ writes: [Write]) async throws -> [Record?] {
        try await engine.transaction(writes: writes)
    }

    /// Device Status snapshot.
    public func status() async throws -> DeviceStatus { try await engine.status() }

    /// Clears the offline database; throws `FieldSyncError.PendingUploads` unless `force`.
    public func reset(force: Bool = false) async throws -> ResetReport { try await engine.reset(force: force) }

    /// Sync events while iterated (the current status first); ending the iteration
    /// cancels the subscription. Ends at once if the subscription cannot start.
    public func syncEvents() -> AsyncStream<SyncEvent> {
        AsyncStream { continuation in
            let forwarder = EventForwarder { continuation.yield($0) }
            do {
                let handle = try engine.addEventListener(listener: forwarder)
                continuation.onTermination = { _ in handle.cancel() }
            } catch {
                continuation.finish()
            }
        }
    }

    /// The sync status: the current one, then every change (a local edit too).
    public func statusUpdates() -> AsyncStream<SyncStatus> {
        AsyncStream { continuation in
            let forwarder = StatusForwarder { continuation.yield($0) }
            do {
                let handle = try engine.addStatusListener(listener: forwarder)
                continuation.onTermination = { _ in handle.cancel() }
            } catch {
                continuation.finish()
            }
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

/// Forwards status callbacks (on a background thread) to a closure.
final class StatusForwarder: StatusListener, @unchecked Sendable {
    private let forward: (SyncStatus) -> Void

    init(_ forward: @escaping (SyncStatus) -> Void) {
        self.forward = forward
    }

    func onStatus(status: SyncStatus) {
        forward(status)
    }
}

/// Forwards an observed query's callbacks (on a background thread) to closures.
final class QueryForwarder: QueryResultListener, @unchecked Sendable {
    private let result: ([Record]) -> Void
    private let error: (FieldSyncError) -> Void

    init(onResult: @escaping ([Record]) -> Void, onError: @escaping (FieldSyncError) -> Void) {
        result = onResult
        error = onError
    }

    func onResult(records: [Record]) {
        result(records)
    }

    func onError(error: FieldSyncError) {
        self.error(error)
    }
}
