package dev.fieldsync

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.withContext

/**
 * The fieldsync engine for Kotlin apps: an offline database of one user that
 * syncs with the server.
 *
 * Every call delegates to the Rust core through the generated bindings
 * ([Engine]); reads and writes go to the device database and work offline.
 * All functions are `suspend` and main-safe: the work runs on the library's
 * own threads. Failures are [FieldSyncException] subclasses
 * (`RecordNotFound`, `Conflict`, `NetworkUnavailable`, `Unauthorized`,
 * `InvalidInput`, `PendingUploads`, `Storage`, `WrongKey`, `Internal`).
 *
 * The sync service runs in the core: [start] it, report the app state and the
 * network, and render [status]; the core decides when to sync.
 *
 * ```
 * val sync = FieldSync.open(File(filesDir, "fieldsync.db").path, "https://sync.example.com", tokenProvider)
 * sync.start()
 * val booking = sync.get("bookings", "bk-1")
 * ```
 */
class FieldSync private constructor(
    /** The generated engine object, for calls the facade does not wrap. */
    val engine: Engine,
    initial: SyncStatus,
) : AutoCloseable {

    companion object {
        /**
         * Opens (or creates) the device database at [databasePath] for the user
         * whose bearer [token] the server at [serverUrl] accepts. Does not touch
         * the network; runs on [Dispatchers.IO].
         *
         * For `https://`, [tlsRoots] chooses the certificate authorities trusted
         * (null: the library's default, the bundled Mozilla roots on Android) and
         * [tlsExtraRootsPem] adds a company's own authority (PEM). [app] names the
         * app, device model and OS version carried in telemetry.
         *
         * [encryptionKey] (32 bytes) encrypts the database (SQLCipher); null keeps
         * it plain. Generate it once with `SecureRandom` and keep it wrapped by an
         * Android Keystore key (see the README); the library never stores it.
         *
         * @throws FieldSyncException.InvalidInput for a blank token, a bad page size,
         *   a key that is not 32 bytes, or TLS settings that cannot work (no
         *   certificate in the PEM, `ExtraOnly` without one, `System` on Android).
         * @throws FieldSyncException.WrongKey when [encryptionKey] does not open the
         *   database (wrong key, none for an encrypted one, one for a plain one);
         *   nothing was changed.
         * @throws FieldSyncException.Storage when the database cannot be opened.
         */
        suspend fun open(
            databasePath: String,
            serverUrl: String,
            token: String,
            pageSize: Int = 1000,
            tlsRoots: TlsRoots? = null,
            tlsExtraRootsPem: String? = null,
            app: AppInfo? = null,
            encryptionKey: ByteArray? = null,
        ): FieldSync = withContext(Dispatchers.IO) {
            wrap(Engine.open(EngineConfig(databasePath, serverUrl, token, pageSize, tlsRoots, tlsExtraRootsPem, app, encryptionKey)))
        }

        /**
         * Opens the engine with tokens from [tokenProvider]: asked now and again
         * whenever the server refuses the token (then the refused request is sent
         * once more). Tokens stay in memory; none is written to the database or
         * the log. Otherwise as the other [open].
         */
        suspend fun open(
            databasePath: String,
            serverUrl: String,
            tokenProvider: TokenProvider,
            pageSize: Int = 1000,
            tlsRoots: TlsRoots? = null,
            tlsExtraRootsPem: String? = null,
            app: AppInfo? = null,
            encryptionKey: ByteArray? = null,
        ): FieldSync = withContext(Dispatchers.IO) {
            val config = EngineConfig(databasePath, serverUrl, "", pageSize, tlsRoots, tlsExtraRootsPem, app, encryptionKey)
            wrap(Engine.openWithTokenProvider(config, tokenProvider))
        }

        /**
         * For tests only: opens the engine on a [TestClock] the test moves by hand,
         * so sync intervals pass when the test says so. Apps use [open].
         */
        suspend fun openForTests(
            databasePath: String,
            serverUrl: String,
            token: String,
            clock: TestClock,
            tokenProvider: TokenProvider? = null,
            pageSize: Int = 1000,
        ): FieldSync = withContext(Dispatchers.IO) {
            val config = EngineConfig(databasePath, serverUrl, token, pageSize, null, null, null)
            wrap(Engine.openForTests(config, tokenProvider, clock))
        }

        private suspend fun wrap(engine: Engine): FieldSync = try {
            FieldSync(engine, engine.syncStatus())
        } catch (e: Throwable) {
            engine.close()
            throw e
        }

        /**
         * Changes the key of the closed database at [databasePath] from [currentKey]
         * to [newKey] (null: not encrypted), keeping everything in it, pending
         * uploads included: encrypts an existing plain database, rotates the key,
         * or decrypts. Close the [FieldSync] on it first.
         *
         * @throws FieldSyncException.WrongKey when [currentKey] does not open it
         *   (nothing was changed).
         * @throws FieldSyncException.InvalidInput when the database is open or missing.
         */
        suspend fun rekeyDatabase(databasePath: String, currentKey: ByteArray?, newKey: ByteArray?) =
            dev.fieldsync.rekeyDatabase(databasePath, currentKey, newKey)

        /** Sends the engine's log to logcat / stderr at [level]; only the first call counts. */
        fun initLogging(level: LogLevel) = dev.fieldsync.initLogging(level)
    }

    private val statusState = MutableStateFlow(initial)
    private val statusHandle: ListenerHandle = engine.addStatusListener(object : StatusListener {
        override fun onStatus(status: SyncStatus) {
            statusState.value = status
        }
    })

    /**
     * The sync status, always current: the icon's state (all six), the running
     * sync's progress (rows done and total), pending uploads (a local edit counts
     * at once) and the last error. The core delivers every change; a collector
     * sees the latest.
     */
    val status: StateFlow<SyncStatus> = statusState.asStateFlow()

    // ---- the sync service ---------------------------------------------------

    /**
     * Starts the sync service: the core's scheduler syncs due tables at their own
     * intervals while the app is active and the network allows it (Wi-Fi only on a
     * metered network waits). Report the app state and the network with
     * [setAppActive] and [setNetwork].
     */
    fun start() = engine.start()

    /** Stops the sync service (a running sync resumes from its last page next time). */
    fun stop() = engine.stop()

    /** The app came to the foreground (true) or went to the background; a running sync finishes. */
    fun setAppActive(active: Boolean) = engine.setAppActive(active)

    /** The OS network changed: connected, metered, and its kind. */
    fun setNetwork(connected: Boolean, metered: Boolean, type: NetworkType) =
        engine.setOsNetwork(OsNetwork(connected, metered, type))

    /** Probes the server now and returns the network as the engine sees it. */
    suspend fun checkNetwork(): NetworkStatus = engine.checkNetwork()

    /** Asks the service for a full sync at once (the app-active, network and Wi-Fi-only rules still hold). */
    fun requestSync() = engine.requestSync()

    /** Asks the service to Refresh [table] (and the tables that depend on it), with a Refresh notification. */
    fun requestRefresh(table: String) = engine.requestRefresh(table)

    /** One scheduler step now: runs what is due, if anything. */
    suspend fun runDue(): ScheduledSync? = engine.runDue()

    /**
     * The body of an OS background job the core asked for in
     * [SyncStatus.background]: waits for a running sync to end; the
     * [BackgroundJob.PERIODIC] job then runs one scheduler step while
     * [backgroundSync] is on. The Android shell calls it from its job service.
     */
    suspend fun runBackgroundJob(job: BackgroundJob): BackgroundJobOutcome = engine.runBackgroundJob(job)

    // ---- settings (kept in the device database) -------------------------------

    /** All sync settings at once. */
    var settings: SyncSettings
        get() = engine.settings()
        set(value) = engine.setSettings(value)

    /** Scheduled syncs start only on an unmetered network. */
    var wifiOnly: Boolean
        get() = settings.wifiOnly
        set(value) { settings = settings.copy(wifiOnly = value) }

    /** The user may switch to online mode. */
    var onlineModeEnabled: Boolean
        get() = settings.onlineModeEnabled
        set(value) { settings = settings.copy(onlineModeEnabled = value) }

    /** Sync telemetry is collected and uploaded; off discards what waits. */
    var telemetryEnabled: Boolean
        get() = settings.telemetryEnabled
        set(value) { settings = settings.copy(telemetryEnabled = value) }

    /** How often scheduled syncs run. */
    var frequency: SyncFrequency
        get() = settings.frequency
        set(value) { settings = settings.copy(frequency = value) }

    /** Skip downloading tables the server reports unchanged. */
    var smartSync: Boolean
        get() = settings.smartSync
        set(value) { settings = settings.copy(smartSync = value) }

    /**
     * Opt-in periodic sync while the app is in the background (off by
     * default: syncs start only while the app is active). The core plans the
     * OS job ([SyncStatus.background]); the Android shell schedules it.
     */
    var backgroundSync: Boolean
        get() = settings.backgroundSync
        set(value) { settings = settings.copy(backgroundSync = value) }

    // ---- online mode ------------------------------------------------------------

    /** True while online mode is on. */
    val onlineMode: Boolean get() = engine.onlineMode()

    /** Turns online mode on (after a network check) or off. */
    suspend fun setOnlineMode(on: Boolean) = engine.setOnlineMode(on)

    /** Live rows of [table] from the server, filtered by column = value; nothing is stored. */
    suspend fun onlineList(
        table: String,
        where: Map<String, Any?> = emptyMap(),
        after: String? = null,
        limit: Int = 100,
    ): OnlinePage = engine.onlineList(
        table, fieldsOf(*where.toList().toTypedArray()).map { (k, v) -> OnlineFilter(k, v) }, after, limit.toUInt(),
    )

    /** One live row from the server; nothing is stored. */
    suspend fun onlineGet(table: String, id: String): Record = engine.onlineGet(table, id)

    // ---- credentials ---------------------------------------------------------------

    /** Replaces the bearer token for every later request (kept in memory only). */
    fun setToken(token: String) = engine.setToken(token)

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

    /**
     * The records of [table] on the device that [where] selects (a condition
     * as filter JSON, the profile's filter language: `{"op": "eq", "column":
     * "status", "value": "open"}`, relative dates and "current user"
     * included; null: every row), ordered by [orderBy] (the primary key
     * breaks ties), [offset] rows skipped, at most [limit]. A condition on a
     * column the table does not sync throws [FieldSyncException.InvalidInput].
     */
    suspend fun query(
        table: String,
        where: String? = null,
        orderBy: List<QueryOrder> = emptyList(),
        limit: Int? = null,
        offset: Int = 0,
    ): List<Record> = engine.query(queryOf(table, where, orderBy, limit, offset))

    /**
     * How SQLite runs that [query] on the device: the lines of its `EXPLAIN QUERY
     * PLAN` (`SEARCH ... USING INDEX ...` when a local index of the profile serves it).
     */
    suspend fun queryPlan(table: String, where: String? = null, orderBy: List<QueryOrder> = emptyList()): List<String> =
        engine.queryPlan(queryOf(table, where, orderBy, null, 0))

    /** How many records of [table] on the device [where] selects. */
    suspend fun count(table: String, where: String? = null): Long =
        engine.count(queryOf(table, where, emptyList(), null, 0)).toLong()

    /**
     * The records a [query] selects, now and again after each local write or
     * sync that changes [table] (once per commit, never for other tables).
     * Collecting observes; cancelling the collector cancels the observation.
     * When [table] leaves the device (the offline profile drops it, or a reset)
     * the flow emits an empty list and goes on: rows come again if it returns.
     * A failure of the query closes the flow with the [FieldSyncException].
     */
    fun observe(
        table: String,
        where: String? = null,
        orderBy: List<QueryOrder> = emptyList(),
        limit: Int? = null,
        offset: Int = 0,
    ): Flow<List<Record>> = callbackFlow {
        val handle = engine.observe(queryOf(table, where, orderBy, limit, offset), object : QueryResultListener {
            override fun onResult(records: List<Record>) {
                trySend(records)
            }

            override fun onError(error: FieldSyncException) {
                close(error)
            }
        })
        awaitClose {
            handle.cancel()
            handle.close()
        }
    }.buffer(Channel.UNLIMITED)

    private fun queryOf(table: String, where: String?, orderBy: List<QueryOrder>, limit: Int?, offset: Int): Query {
        require(limit == null || limit >= 0) { "limit must not be negative" }
        require(offset >= 0) { "offset must not be negative" }
        return Query(table, where, orderBy, limit?.toUInt(), offset.toUInt())
    }

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

    /**
     * Applies [writes] in order as one transaction: on the device all of them
     * commit together or none does (the first failing write throws and
     * nothing is kept), and the next sync uploads them as one unit that the
     * server applies whole or not at all. If the server refuses one (or, with
     * conflict detection on, one conflicts) none is applied, each shows as a
     * sync error and the device takes the server's rows back. Returns each
     * write's record (null for a delete).
     */
    suspend fun transaction(writes: List<Write>): List<Record?> = engine.transaction(writes)

    /**
     * [transaction] with the writes listed in [block]:
     * `sync.transaction { insert("work_order_service_tasks", id, "task_name" to "Check filter"); put("bookings", bk, "notes" to "Filter checked") }`.
     * The block only lists the writes; they are applied together when it returns.
     */
    suspend fun transaction(block: TransactionWrites.() -> Unit): List<Record?> =
        transaction(TransactionWrites().apply(block).writes)

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

    /**
     * Refresh: uploads pending changes, then downloads [table] and the tables
     * that depend on it, always (even when the server reports no change), with a
     * Refresh notification among the [syncEvents].
     */
    suspend fun refresh(table: String): SyncReport = engine.refresh(table)

    /** Uploads pending changes, then downloads only [tables] (no notification). */
    suspend fun syncTables(vararg tables: String): SyncReport = engine.syncTables(tables.toList())

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
        val handle = engine.addEventListener(object : SyncEventListener {
            override fun onEvent(event: SyncEvent) {
                trySend(event)
            }
        })
        awaitClose {
            handle.cancel()
            handle.close()
        }
    }.buffer(Channel.UNLIMITED)

    /** Stops the service and frees the engine. Calls after this throw [IllegalStateException]. */
    override fun close() {
        engine.stop()
        statusHandle.cancel()
        statusHandle.close()
        engine.close()
    }
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
        is FieldSyncException.WrongKey -> reason
        is FieldSyncException.Internal -> reason
    }

/** The writes of a [FieldSync.transaction], in order, with plain Kotlin values. */
class TransactionWrites {
    internal val writes = mutableListOf<Write>()

    /** Creates a record (it must not be on the device). */
    fun insert(table: String, id: String, vararg fields: Pair<String, Any?>) {
        writes += Write(WriteOp.INSERT, table, id, fieldsOf(*fields))
    }

    /** Changes fields of a record on the device. */
    fun update(table: String, id: String, vararg fields: Pair<String, Any?>) {
        writes += Write(WriteOp.UPDATE, table, id, fieldsOf(*fields))
    }

    /** Updates the record if it is on the device, creates it otherwise. */
    fun put(table: String, id: String, vararg fields: Pair<String, Any?>) {
        writes += Write(WriteOp.PUT, table, id, fieldsOf(*fields))
    }

    /** Deletes a record on the device. */
    fun delete(table: String, id: String) {
        writes += Write(WriteOp.DELETE, table, id, emptyMap())
    }
}
