package dev.fieldsync

import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.channelFlow

/**
 * The fieldsync engine for Kotlin apps: an offline database of one user that
 * syncs with the server.
 *
 * Every call delegates to the Rust core through the generated bindings
 * ([Engine]); reads and writes go to the device database and work offline.
 * All functions are `suspend` and main-safe: the work runs on the library's
 * own threads. Failures are [FieldSyncException] subclasses
 * (`RecordNotFound`, `Conflict`, `NetworkUnavailable`, `Unauthorized`,
 * `InvalidInput`, `PendingUploads`, `Storage`, `Internal`).
 *
 * ```
 * val sync = FieldSync.open(File(filesDir, "fieldsync.db").path, "https://sync.example.com", token)
 * sync.syncNow()
 * val booking = sync.get("bookings", "bk-1")
 * ```
 */
class FieldSync private constructor(
    /** The generated engine object, for calls the facade does not wrap. */
    val engine: Engine,
) : AutoCloseable {

    companion object {
        /**
         * Opens (or creates) the device database at [databasePath] for the user
         * whose bearer [token] the server at [serverUrl] accepts. Does not touch
         * the network.
         *
         * For `https://`, [tlsRoots] chooses the certificate authorities trusted
         * (null: the library's default, the bundled Mozilla roots on Android) and
         * [tlsExtraRootsPem] adds a company's own authority (PEM).
         *
         * @throws FieldSyncException.InvalidInput for a blank token, a bad page size
         *   or TLS settings that cannot work (no certificate in the PEM, `ExtraOnly`
         *   without one, `System` on Android).
         * @throws FieldSyncException.Storage when the database cannot be opened.
         */
        @Throws(FieldSyncException::class)
        fun open(
            databasePath: String,
            serverUrl: String,
            token: String,
            pageSize: Int = 1000,
            tlsRoots: TlsRoots? = null,
            tlsExtraRootsPem: String? = null,
        ): FieldSync =
            FieldSync(
                Engine.open(EngineConfig(databasePath, serverUrl, token, pageSize, tlsRoots, tlsExtraRootsPem)),
            )

        /** Sends the engine's log to logcat / stderr at [level]; only the first call counts. */
        fun initLogging(level: LogLevel) = dev.fieldsync.initLogging(level)
    }

    /** This device's id, stable for the life of the database. */
    val deviceId: String get() = engine.deviceId()

    /** The offline profile in force; null before the first sync. */
    fun offlineProfile(): SyncProfileInfo? = engine.offlineProfile()

    /** Reads a record from the device; throws [FieldSyncException.RecordNotFound] when it is not there. */
    suspend fun get(table: String, id: String): Record = engine.get(table, id)

    /** Reads a record from the device, or null when it is not there. */
    suspend fun getOrNull(table: String, id: String): Record? = try {
        engine.get(table, id)
    } catch (e: FieldSyncException.RecordNotFound) {
        null
    }

    /** Lists records of [table] ordered by id, after [after], at most [limit]. */
    suspend fun list(table: String, after: String? = null, limit: Int = 100): List<Record> =
        engine.list(table, after, limit)

    /** Creates a record on the device and queues it for upload. */
    suspend fun insert(table: String, id: String, fields: Map<String, Value>): Record =
        engine.insert(table, id, fields)

    /** Changes fields of a record on the device and queues the change. */
    suspend fun update(table: String, id: String, fields: Map<String, Value>): Record =
        engine.update(table, id, fields)

    /** Updates the record if it is on the device, creates it otherwise. */
    suspend fun put(table: String, id: String, fields: Map<String, Value>): Record =
        engine.put(table, id, fields)

    /** [put] with plain Kotlin values: `put("bookings", id, "notes" to "done")`. */
    suspend fun put(table: String, id: String, vararg fields: Pair<String, Any?>): Record =
        engine.put(table, id, fieldsOf(*fields))

    /** Deletes a record on the device and queues the deletion. */
    suspend fun delete(table: String, id: String) = engine.delete(table, id)

    /** Local changes waiting for upload. */
    suspend fun pendingUploads(): Long = engine.pendingUploads()

    /** Sync errors kept on the device, newest first. */
    suspend fun syncErrors(limit: Int = 50): List<SyncError> = engine.syncErrors(limit)

    /**
     * Sync now: uploads pending changes, then downloads every table. With
     * conflict detection on, a change where the server kept its version is in
     * [SyncReport.conflicts]; with [failOnConflict] it is thrown as
     * [FieldSyncException.Conflict] instead (the sync itself completed).
     */
    suspend fun syncNow(failOnConflict: Boolean = false): SyncReport {
        val report = engine.syncNow()
        if (failOnConflict) report.throwOnConflict()
        return report
    }

    /** Refresh: uploads pending changes, then downloads only [tables]. */
    suspend fun refresh(vararg tables: String): SyncReport = engine.refresh(tables.toList())

    /** Device Status snapshot, with the Offline Status of every table. */
    suspend fun status(): DeviceStatus = engine.status()

    /**
     * Clears the offline database. Throws [FieldSyncException.PendingUploads]
     * (with the count) while changes wait for upload, unless [force].
     */
    suspend fun reset(force: Boolean = false): ResetReport = engine.reset(force)

    /**
     * Sync events while collected. Collecting subscribes; cancelling the
     * collector cancels the subscription (no more callbacks). Events are
     * buffered, never dropped, for a slow collector.
     */
    fun syncEvents(): Flow<SyncEvent> = callbackFlow {
        val handle = engine.subscribe(object : SyncEventListener {
            override fun onEvent(event: SyncEvent) {
                trySend(event)
            }
        })
        awaitClose {
            handle.cancel()
            handle.close()
        }
    }.buffer(Channel.UNLIMITED)

    /**
     * The status a sync screen shows: one [StatusUpdate] as soon as collection
     * starts (the listener is subscribed by then), then one per sync event. The
     * Device Status is read again when a sync starts and when it ends.
     * Cancelling the collector cancels the subscription.
     */
    fun statusUpdates(): Flow<StatusUpdate> = channelFlow {
        val events = Channel<SyncEvent>(Channel.UNLIMITED)
        val handle = engine.subscribe(object : SyncEventListener {
            override fun onEvent(event: SyncEvent) {
                events.trySend(event)
            }
        })
        try {
            var device = status()
            send(StatusUpdate(syncing = false, event = null, device = device))
            for (event in events) {
                val ended = event is SyncEvent.SyncFinished || event is SyncEvent.SyncFailed
                if (ended || event is SyncEvent.SyncStarted) device = status()
                send(StatusUpdate(syncing = !ended, event = event, device = device))
            }
        } finally {
            handle.cancel()
            handle.close()
        }
    }.buffer(Channel.UNLIMITED)

    /** Frees the engine. Calls after this throw [IllegalStateException]. */
    override fun close() = engine.close()
}

/** One element of [FieldSync.statusUpdates]. */
data class StatusUpdate(
    /** True from a sync's start until it finishes or fails. */
    val syncing: Boolean,
    /** The event that caused this update; null for the first update. */
    val event: SyncEvent?,
    /** The Device Status as of the last sync start or end. */
    val device: DeviceStatus,
) {
    /** Up to date: not syncing, the last sync finished, nothing waits for upload. */
    val upToDate: Boolean
        get() = !syncing && event is SyncEvent.SyncFinished && device.pendingUploads == 0L
}

/**
 * Throws [FieldSyncException.Conflict] for the first conflict of this report,
 * for callers that treat a conflict as a failure.
 */
fun SyncReport.throwOnConflict() {
    val c = conflicts.firstOrNull() ?: return
    throw FieldSyncException.Conflict(c.table, c.recordId, "sync conflict on ${c.table}/${c.recordId}: ${c.reason}")
}

/** The explanation every [FieldSyncException] carries, fit to show in a UI (no field values). */
val FieldSyncException.userMessage: String
    get() = when (this) {
        is FieldSyncException.RecordNotFound -> reason
        is FieldSyncException.Conflict -> reason
        is FieldSyncException.NetworkUnavailable -> reason
        is FieldSyncException.Unauthorized -> reason
        is FieldSyncException.InvalidInput -> reason
        is FieldSyncException.PendingUploads -> reason
        is FieldSyncException.Storage -> reason
        is FieldSyncException.Internal -> reason
    }
