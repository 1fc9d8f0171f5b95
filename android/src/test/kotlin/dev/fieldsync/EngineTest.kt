package dev.fieldsync

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.dropWhile
import kotlinx.coroutines.flow.takeWhile
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.net.ServerSocket
import java.util.Collections
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit

/**
 * The generated bindings and the facade against a real `fieldsync server` on
 * loopback and a real SQLite file: every test starts its own server.
 */
class EngineTest {
    private lateinit var server: TestServer
    private lateinit var tech: String
    private val opened = mutableListOf<AutoCloseable>()

    @BeforeEach
    fun startServer() {
        server = TestServer.start()
        tech = server.user("tech-a", "technician")
        server.seed(listOf("tech-a"), 20)
    }

    @AfterEach
    fun stopServer() {
        opened.reversed().forEach { it.close() }
        server.close()
    }

    private fun open(name: String = "device", url: String = server.url): FieldSync =
        openBlocking(server.databasePath(name), url, tech).also { opened += it }

    /** A loopback URL where nothing listens: the network is down. */
    private fun deadUrl(): String = ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress()).use { "http://127.0.0.1:${it.localPort}" }

    @Test
    fun `an encrypted database syncs, refuses a wrong key, and rekeys with its pending change`() = runBlocking<Unit> {
        val path = server.databasePath("encrypted")
        val key = ByteArray(32) { 7 }
        val other = ByteArray(32) { 8 }
        openBlocking(path, server.url, tech, encryptionKey = key).use { sync ->
            assertTrue(sync.syncNow().tables.isNotEmpty())
            sync.put("bookings", "bk-0000001", "notes" to "kept through every key")
            assertEquals(1L, sync.pendingUploads())
        }
        assertFalse(java.io.File(path).readBytes().decodeToString().contains("kept through every key"))
        val wrong = assertThrows<FieldSyncException.WrongKey> { openBlocking(path, server.url, tech, encryptionKey = other) }
        assertTrue(wrong.userMessage.contains("key"), wrong.userMessage)
        assertThrows<FieldSyncException.InvalidInput> { openBlocking(path, server.url, tech, encryptionKey = ByteArray(16)) }
        FieldSync.rekeyDatabase(path, key, other)
        assertThrows<FieldSyncException.WrongKey> { openBlocking(path, server.url, tech, encryptionKey = key) }
        openBlocking(path, server.url, tech, encryptionKey = other).use { sync ->
            assertEquals(1L, sync.pendingUploads())
            assertEquals(1L, sync.syncNow().uploaded)
        }
    }

    @Test
    fun `tls settings reach the core, and those that cannot work are refused at open`() = runBlocking<Unit> {
        val noPem = assertThrows<FieldSyncException.InvalidInput> {
            openBlocking(server.databasePath("tls-a"), server.url, tech, tlsRoots = TlsRoots.EXTRA_ONLY)
        }
        assertTrue(noPem.userMessage.contains("extra_roots_pem"), noPem.userMessage)
        val garbage = assertThrows<FieldSyncException.InvalidInput> {
            openBlocking(
                server.databasePath("tls-b"), server.url, tech,
                tlsRoots = TlsRoots.BUNDLED, tlsExtraRootsPem = "not a certificate",
            )
        }
        assertTrue(garbage.userMessage.contains("no PEM certificate"), garbage.userMessage)
        // A company's authority (the tests' one): accepted; TLS settings apply
        // to https:// only, so this plain-HTTP server syncs as before. The
        // HTTPS behaviour itself is tested in Rust (tests/tls.rs).
        val fixtures = System.getProperty("fieldsync.fixtures") ?: error("fieldsync.fixtures is not set")
        val ca = java.io.File(fixtures, "tls/ca.pem").readText()
        openBlocking(
            server.databasePath("tls-c"), server.url, tech,
            tlsRoots = TlsRoots.EXTRA_ONLY, tlsExtraRootsPem = ca,
        ).use { trusted ->
            assertTrue(trusted.syncNow().tables.isNotEmpty())
        }
    }

    @Test
    fun `first sync downloads the offline profile and its rows`() = runBlocking<Unit> {
        val sync = open()
        val before = sync.status()
        assertNull(before.profileName, "no offline profile before the first sync")
        assertNull(sync.offlineProfile())

        val report = sync.syncNow()
        assertTrue(report.tables.isNotEmpty())
        assertTrue(report.tables.all { it.initial }, "the first sync is the initial download")
        assertTrue(report.tables.sumOf { it.rowsUpserted } > 0)

        val status = sync.status()
        assertNotNull(status.profileName)
        assertEquals(0L, status.pendingUploads)
        assertTrue(status.databaseBytes > 0)
        val bookings = status.tables.single { it.table == "bookings" }
        assertTrue(bookings.rows > 0)
        assertTrue(bookings.initialSyncDone)
        assertNotNull(bookings.lastSyncAtMs)

        val profile = checkNotNull(sync.offlineProfile())
        val table = profile.tables.single { it.name == "bookings" }
        assertEquals(table.primaryKey, table.columns.first().name)

        val rows = sync.list("bookings", limit = 5)
        assertEquals(5, rows.size)
        assertEquals(rows.map { it.id }.sorted(), rows.map { it.id })
        val next = sync.list("bookings", after = rows.last().id, limit = 1000)
        assertEquals(bookings.rows, (rows.size + next.size).toLong(), "paging by id covers the table")
        val one = sync.get("bookings", rows.first().id)
        assertEquals(rows.first(), one)
        assertTrue(one.version > 0)
        assertEquals(Value.Text(one.id), one.fields[table.primaryKey])
    }

    @Test
    fun `an offline write is kept and queued, then uploaded when the server is reachable`() = runBlocking<Unit> {
        open("d").syncNow()
        opened.removeAt(opened.lastIndex).close()

        val offline = open("d", url = deadUrl())
        val written = offline.put("bookings", "bk-0000001", "notes" to "written offline", "travel_minutes" to 42)
        assertEquals("written offline", written.text("notes"))
        assertEquals(1L, offline.pendingUploads())
        val e = assertThrows<FieldSyncException.NetworkUnavailable> { runBlocking { offline.syncNow() } }
        assertTrue(e.userMessage.contains("Network or Service Unavailable"), e.userMessage)
        assertEquals("written offline", offline.get("bookings", "bk-0000001").text("notes"), "nothing lost")
        assertEquals(42L, offline.get("bookings", "bk-0000001").long("travel_minutes"))
        assertEquals(1L, offline.status().pendingUploads)
        opened.removeAt(opened.lastIndex).close()

        val online = open("d")
        val report = online.syncNow()
        assertEquals(1L, report.uploaded)
        assertEquals(0L, online.pendingUploads())
        assertTrue(server.record(tech, "bookings", "bk-0000001").contains("\"notes\":\"written offline\""))
    }

    @Test
    fun `conflict detection off - the device's change wins`() = runBlocking<Unit> {
        val dispatcher = server.user("disp", "dispatcher")
        val sync = open()
        sync.syncNow()
        sync.put("bookings", "bk-0000001", "notes" to "technician text")
        server.dispatcherPut(dispatcher, "bookings", "bk-0000001", """{"notes":"dispatcher text"}""")

        val report = sync.syncNow(failOnConflict = true)
        assertEquals(1L, report.uploaded)
        assertTrue(report.conflicts.isEmpty())
        assertEquals("technician text", sync.get("bookings", "bk-0000001").text("notes"))
        assertTrue(server.record(dispatcher, "bookings", "bk-0000001").contains("\"notes\":\"technician text\""))
        assertTrue(sync.syncErrors().isEmpty())
    }

    @Test
    fun `conflict detection on - the server wins, the report and a typed exception say so`() = runBlocking<Unit> {
        val dispatcher = server.user("disp", "dispatcher")
        server.setConflictDetection(true)
        val sync = open()
        sync.syncNow()

        // As a report.
        sync.put("bookings", "bk-0000001", "notes" to "technician again")
        server.dispatcherPut(dispatcher, "bookings", "bk-0000001", """{"notes":"dispatcher wins"}""")
        val report = sync.syncNow()
        val conflict = report.conflicts.single()
        assertEquals(SyncErrorKind.CONFLICT, conflict.kind)
        assertEquals(RecordAction.UPDATE, conflict.action)
        assertEquals("bk-0000001", conflict.recordId)
        assertEquals(Value.Text("dispatcher wins"), conflict.serverData?.get("notes"))
        assertEquals("dispatcher wins", sync.get("bookings", "bk-0000001").text("notes"), "the device copy was replaced")
        assertEquals(SyncErrorKind.CONFLICT, sync.syncErrors().first().kind)
        assertEquals(conflict.recordId, sync.status().recentErrors.first().recordId)

        // As a typed exception.
        sync.put("bookings", "bk-0000002", "notes" to "mine")
        server.dispatcherPut(dispatcher, "bookings", "bk-0000002", """{"notes":"theirs"}""")
        val e = assertThrows<FieldSyncException.Conflict> { runBlocking { sync.syncNow(failOnConflict = true) } }
        assertEquals("bookings", e.table)
        assertEquals("bk-0000002", e.id)
        assertEquals("theirs", sync.get("bookings", "bk-0000002").text("notes"))
        assertEquals(0L, sync.pendingUploads())
    }

    @Test
    fun `reading a record that is not on the device is a typed Record Not Found`() = runBlocking<Unit> {
        val sync = open()
        sync.syncNow()
        val e = assertThrows<FieldSyncException.RecordNotFound> { runBlocking { sync.get("bookings", "bk-missing") } }
        assertEquals("bookings", e.table)
        assertEquals("bk-missing", e.id)
        assertTrue(e.userMessage.startsWith("Record Not Found"), e.userMessage)
        assertNull(sync.getOrNull("bookings", "bk-missing"))

        sync.delete("bookings", "bk-0000003")
        assertThrows<FieldSyncException.RecordNotFound> { runBlocking { sync.get("bookings", "bk-0000003") } }
        assertThrows<FieldSyncException.RecordNotFound> {
            runBlocking { sync.update("bookings", "bk-missing", fieldsOf("notes" to "x")) }
        }
        assertThrows<FieldSyncException.InvalidInput> { runBlocking { sync.get("no_such_table", "x") } }
        assertThrows<FieldSyncException.InvalidInput> {
            runBlocking { sync.put("bookings", "bk-0000001", fieldsOf("no_such_column" to 1)) }
        }
        assertThrows<FieldSyncException.InvalidInput> { runBlocking { sync.list("bookings", limit = -1) } }
    }

    @Test
    fun `reset refuses with the pending count, then forced reset clears and sync restores`() = runBlocking<Unit> {
        val sync = open()
        sync.syncNow()
        sync.put("bookings", "bk-0000001", "notes" to "one")
        sync.put("bookings", "bk-0000002", "notes" to "two")

        val e = assertThrows<FieldSyncException.PendingUploads> { runBlocking { sync.reset() } }
        assertEquals(2L, e.count)
        assertEquals("one", sync.get("bookings", "bk-0000001").text("notes"), "a refused reset loses nothing")

        val done = sync.reset(force = true)
        assertEquals(2L, done.discardedChanges)
        val status = sync.status()
        assertNull(status.profileName)
        assertEquals(0L, status.pendingUploads)
        assertThrows<FieldSyncException.InvalidInput> { runBlocking { sync.get("bookings", "bk-0000001") } }

        sync.syncNow()
        assertTrue(sync.status().tables.single { it.table == "bookings" }.rows > 0)
        assertEquals(ResetReport(0L), sync.reset())
    }

    @Test
    fun `sync events Flow delivers in order and stops when the collector is done`() = runBlocking<Unit> {
        val sync = open()
        val events = async(Dispatchers.Default) {
            // Skip a sync whose start was missed; keep one whole sync.
            sync.syncEvents().dropWhile { it !is SyncEvent.SyncStarted }.takeWhile { it !is SyncEvent.SyncFinished }.toList()
        }
        // The listener subscribes when collection starts; keep syncing until it has seen one whole sync.
        while (!events.isCompleted) {
            sync.syncNow()
            kotlinx.coroutines.delay(50)
        }
        val seen = events.await()
        assertTrue(seen.first() is SyncEvent.SyncStarted)
        assertEquals(1, seen.count { it is SyncEvent.SyncStarted }, "one sync, in order")
        assertTrue(seen.none { it is SyncEvent.SyncFailed })
    }

    @Test
    fun `a cancelled listener gets no more callbacks`() = runBlocking<Unit> {
        val sync = open()
        val received = Collections.synchronizedList(mutableListOf<SyncEvent>())
        val finished = CountDownLatch(1)
        val handle = sync.engine.addEventListener(object : SyncEventListener {
            override fun onEvent(event: SyncEvent) {
                received += event
                if (event is SyncEvent.SyncFinished) finished.countDown()
            }
        })
        assertTrue(handle.isActive())
        sync.syncNow()
        assertTrue(finished.await(30, TimeUnit.SECONDS))
        assertTrue(received.first() is SyncEvent.Status, "the current status first")
        assertTrue(received[1] is SyncEvent.SyncStarted)
        assertTrue(received.any { it is SyncEvent.TableProgress })

        // Counted once cancel() has returned: events reach a listener through
        // a queue, so the first sync's last ones (the initial-sync
        // notification follows SyncFinished) may still be arriving until then.
        handle.cancel()
        val countAtCancel = received.size
        assertFalse(handle.isActive())

        // A second listener proves the next sync's events were delivered.
        val control = CountDownLatch(1)
        val controlHandle = sync.engine.addEventListener(object : SyncEventListener {
            override fun onEvent(event: SyncEvent) {
                if (event is SyncEvent.SyncFinished) control.countDown()
            }
        })
        sync.syncNow()
        assertTrue(control.await(30, TimeUnit.SECONDS))
        assertEquals(countAtCancel, received.size, "no callback after cancel()")
        controlHandle.close()
        handle.close()
        assertThrows<IllegalStateException> { handle.isActive() }
    }

    @Test
    fun `opening with bad input is a typed error`() {
        assertThrows<FieldSyncException.InvalidInput> { openBlocking(server.databasePath("x"), server.url, " ") }
        assertThrows<FieldSyncException.InvalidInput> { openBlocking(server.databasePath("x"), server.url, tech, pageSize = 0) }
        assertThrows<FieldSyncException.InvalidInput> { openBlocking(server.databasePath("x"), server.url, tech, pageSize = -5) }
    }

    @Test
    fun `a refused token is Unauthorized`() = runBlocking<Unit> {
        val sync = openBlocking(server.databasePath("u"), server.url, "not-a-token").also { opened += it }
        assertThrows<FieldSyncException.Unauthorized> { runBlocking { sync.syncNow() } }
        Unit
    }

    @Test
    fun `insert, update and refresh of one table`() = runBlocking<Unit> {
        val sync = open()
        sync.syncNow()
        val profile = checkNotNull(sync.offlineProfile())
        val bookings = profile.tables.single { it.name == "bookings" }
        assertTrue(bookings.columns.any { it.name == "travel_minutes" && it.kind == ColumnKind.INTEGER })

        val existing = sync.get("bookings", "bk-0000004")
        val updated = sync.update("bookings", existing.id, fieldsOf("travel_minutes" to 9))
        assertEquals(9L, updated.long("travel_minutes"))
        assertThrows<FieldSyncException.InvalidInput> {
            runBlocking { sync.insert("bookings", existing.id, existing.fields) }
        }
        val report = sync.refresh("bookings")
        // A Refresh downloads the table (and the tables whose rules reach it)
        // even though the server reports no change.
        assertTrue(report.tables.any { it.table == "bookings" && it.pages > 0 }, "$report")
        assertTrue(report.skippedUnchanged.isEmpty())
        assertEquals(1L, report.uploaded)
        assertEquals(9L, sync.get("bookings", existing.id)["travel_minutes"])
        assertThrows<FieldSyncException.InvalidInput> { runBlocking { sync.refresh("no_such_table") } }
    }
}
