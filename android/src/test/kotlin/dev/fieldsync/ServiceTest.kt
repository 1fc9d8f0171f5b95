package dev.fieldsync

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.util.Collections

/**
 * The core's sync service through the Kotlin facade, against a real
 * `fieldsync server` process: the scheduler runs in the core on a [TestClock]
 * (for tests only) and the test only reports the app state and the network,
 * as a shell does. Assertions are on the order of events and statuses, never
 * on durations; the timeouts only stop a broken run.
 */
class ServiceTest {
    private val servers = mutableListOf<TestServer>()
    private val opened = mutableListOf<FieldSync>()
    private val background = CoroutineScope(SupervisorJob() + Dispatchers.Default)

    @AfterEach
    fun tearDown() {
        background.cancel()
        opened.forEach { it.close() }
        servers.forEach { it.close() }
    }

    private fun server(pullDelayMs: Long = 0): Pair<TestServer, String> {
        val server = TestServer.start(pullDelayMs).also { servers += it }
        val token = server.user("tech-a", "technician")
        server.seed(listOf("tech-a"), 20)
        return server to token
    }

    private suspend fun openOnClock(server: TestServer, token: String, clock: TestClock, name: String = "svc", pageSize: Int = 1000) =
        FieldSync.openForTests(server.databasePath(name), server.url, token, clock, pageSize = pageSize).also { opened += it }

    /** Every sync event, in order, from now on. */
    private fun events(sync: FieldSync): Channel<SyncEvent> {
        val channel = Channel<SyncEvent>(Channel.UNLIMITED)
        background.launch { sync.syncEvents().collect { channel.send(it) } }
        return channel
    }

    private suspend fun Channel<SyncEvent>.next(what: String, match: (SyncEvent) -> Boolean): SyncEvent =
        withTimeout(60_000) {
            var e = receive()
            while (!match(e)) {
                if (e is SyncEvent.SyncFailed) error("sync failed while waiting for $what: ${e.reason}")
                e = receive()
            }
            e
        }

    @Test
    fun `the started service syncs due tables by itself at their own intervals`() = runBlocking<Unit> {
        val (server, token) = server()
        val clock = TestClock(T0)
        val sync = openOnClock(server, token, clock)
        sync.smartSync = false // every due table downloads, so the report names them
        val events = events(sync)
        sync.setAppActive(true)
        sync.setNetwork(connected = true, metered = false, type = NetworkType.WIFI)
        sync.start()

        // The first download, started by the service itself.
        val first = events.next("the first sync") { it is SyncEvent.SyncFinished } as SyncEvent.SyncFinished
        val all = sync.offlineProfile()!!.tables.map { it.name }.toSet()
        assertEquals(all, first.report.tables.map { it.table }.toSet())
        withTimeout(60_000) { sync.status.first { it.waitingFor == Blocker.UP_TO_DATE } }

        // The earliest interval passes: the tables due then, and only they, sync.
        val due = sync.engine.nextDue()
        val soonest = due.values.filterNotNull().min()
        clock.advance(soonest - clock.nowMs())
        val expected = due.filterValues { it != null && it <= clock.nowMs() }.keys
        assertTrue(expected.isNotEmpty() && expected != all, "some tables are due, not all: $due")
        assertTrue("booking_statuses" !in expected, "a daily table waits for its own interval")
        events.next("a scheduled sync start") { it is SyncEvent.SyncStarted }
        val second = events.next("the scheduled sync") { it is SyncEvent.SyncFinished } as SyncEvent.SyncFinished
        assertEquals(expected, second.report.tables.filter { it.pages > 0 }.map { it.table }.toSet())
    }

    @Test
    fun `app inactive - no new sync starts, but a running one finishes`() = runBlocking<Unit> {
        val (server, token) = server(pullDelayMs = 150)
        val clock = TestClock(T0)
        val sync = openOnClock(server, token, clock, pageSize = 10)
        val events = events(sync)
        sync.setAppActive(true)
        sync.setNetwork(connected = true, metered = false, type = NetworkType.WIFI)
        sync.start()

        // The app goes to the background while the first sync downloads.
        events.next("the first page") { it is SyncEvent.TableProgress }
        sync.setAppActive(false)
        val finished = events.next("the end of the running sync") {
            it is SyncEvent.SyncFinished || it is SyncEvent.SyncFailed
        }
        assertTrue(finished is SyncEvent.SyncFinished, "the running sync finished: $finished")
        assertTrue(sync.status().tables.all { it.initialSyncDone })

        // A day later, still in the background: the scheduler starts nothing.
        val lastSync = sync.status().tables.associate { it.table to it.lastSyncAtMs }
        clock.advance(DAY)
        assertEquals(Decision.Wait(Blocker.APP_INACTIVE, null), sync.engine.schedulerDecision())
        assertNull(sync.runDue(), "one scheduler step runs nothing")
        assertEquals(lastSync, sync.status().tables.associate { it.table to it.lastSyncAtMs })

        // Back in the foreground, the due tables sync.
        sync.setAppActive(true)
        events.next("a sync once active") { it is SyncEvent.SyncStarted }
        events.next("its end") { it is SyncEvent.SyncFinished }
    }

    @Test
    fun `Wi-Fi only - a metered network blocks syncs, an unmetered one allows them`() = runBlocking<Unit> {
        val (server, token) = server()
        val clock = TestClock(T0)
        val sync = openOnClock(server, token, clock)
        sync.wifiOnly = true
        val events = events(sync)
        sync.setAppActive(true)
        sync.setNetwork(connected = true, metered = true, type = NetworkType.CELLULAR)
        sync.start()
        val held = withTimeout(60_000) { sync.status.first { it.waitingFor == Blocker.METERED_NETWORK } }
        assertNull(held.progress)
        assertNull(sync.offlineProfile(), "nothing was downloaded")
        sync.requestSync() // even the user's sync now waits for Wi-Fi
        assertEquals(Blocker.METERED_NETWORK, (sync.engine.schedulerDecision() as Decision.Wait).blocker)

        sync.setNetwork(connected = true, metered = false, type = NetworkType.WIFI)
        events.next("a sync on Wi-Fi") { it is SyncEvent.SyncStarted }
        events.next("its end") { it is SyncEvent.SyncFinished }
        assertTrue(sync.offlineProfile() != null)
    }

    @Test
    fun `settings survive a reopen`() = runBlocking<Unit> {
        val (server, token) = server()
        val path = server.databasePath("settings")
        FieldSync.open(path, server.url, token).use { sync ->
            assertFalse(sync.wifiOnly)
            sync.wifiOnly = true
            sync.telemetryEnabled = false
            sync.frequency = SyncFrequency.Every(3600u)
            assertThrows<FieldSyncException.InvalidInput> { sync.frequency = SyncFrequency.Every(10u) }
        }
        FieldSync.open(path, server.url, token).use { again ->
            assertTrue(again.wifiOnly)
            assertFalse(again.telemetryEnabled)
            assertEquals(SyncFrequency.Every(3600u), again.frequency)
            assertTrue(again.onlineModeEnabled)
        }
    }

    @Test
    fun `online mode reads a table outside the profile and stores nothing`() = runBlocking<Unit> {
        val server = TestServer.start().also { servers += it }
        server.admin(
            "PUT", "/v1/admin/profiles/small",
            """{"name":"small","tables":[{"name":"bookings","columns":["name","resource_id"],
               "rules":[{"kind":"owned","column":"resource_id"}],"sync_interval_secs":300}]}""",
        )
        val created = server.admin("POST", "/v1/admin/users", """{"id":"tech-o","name":"o","role":"technician","profile":"small"}""")
        val token = Regex("\"token\"\\s*:\\s*\"([^\"]+)\"").find(created)!!.groupValues[1]
        server.seed(listOf("tech-o"), 10)
        server.admin("PUT", "/v1/admin/online-access", """{"tables":["customer_assets"]}""")
        val sync = FieldSync.open(server.databasePath("online"), server.url, token).also { opened += it }
        sync.syncNow()
        assertEquals(listOf("bookings"), sync.offlineProfile()!!.tables.map { it.name })

        sync.setOnlineMode(true)
        assertTrue(sync.onlineMode)
        withTimeout(60_000) { sync.status.first { it.onlineMode } }
        val page = sync.onlineList("customer_assets", limit = 20)
        assertTrue(page.rows.isNotEmpty())
        val one = sync.onlineGet("customer_assets", page.rows.first().id)
        assertEquals(page.rows.first().id, one.id)

        // Nothing of it is on the device.
        assertThrows<FieldSyncException.InvalidInput> { runBlocking { sync.list("customer_assets") } }
        assertEquals(0L, sync.pendingUploads())
        sync.setOnlineMode(false)
        assertFalse(sync.onlineMode)
    }

    @Test
    fun `the status StateFlow shows syncing with growing progress, then pending uploads 1 after a local edit`() = runBlocking<Unit> {
        val (server, token) = server(pullDelayMs = 100)
        val sync = FieldSync.open(server.databasePath("flow"), server.url, token, pageSize = 10).also { opened += it }
        val seen = Collections.synchronizedList(mutableListOf<SyncStatus>())
        val collector = background.launch { sync.status.collect { seen += it } }
        // The collector has the current status (a StateFlow emits no change to wait for).
        withTimeout(60_000) { while (seen.isEmpty()) kotlinx.coroutines.delay(10) }

        sync.syncNow()
        withTimeout(60_000) { sync.status.first { it.progress == null && it.lastSyncAtMs != null } }
        val during = synchronized(seen) { seen.toList() }
        val syncing = during.filter { it.icon == SyncIcon.SYNCING }
        assertTrue(syncing.isNotEmpty(), "the flow showed the sync: $during")
        val done = syncing.mapNotNull { it.progress?.rowsDone }
        assertEquals(done.sorted(), done, "progress only grows")
        assertTrue(done.distinct().size >= 2, "progress grew during the sync: $done")
        assertEquals(SyncIcon.CONNECTED, sync.status.value.icon, "up to date after it")

        // A local edit: the flow says one upload waits, before any sync.
        val id = sync.list("bookings", limit = 1).first().id
        sync.put("bookings", id, "notes" to "on site")
        val pending = withTimeout(60_000) { sync.status.first { it.pendingUploads == 1L } }
        assertEquals(SyncIcon.PENDING_UPLOADS, pending.icon)
        assertEquals(1L, sync.status.value.pendingUploads)
        collector.cancel()
    }

    @Test
    fun `a token rotated on the server - the provider is asked once, the sync succeeds, nothing is lost`() = runBlocking<Unit> {
        val (server, first) = server()
        val asks = Collections.synchronizedList(mutableListOf<Boolean>())
        var current = first
        val provider = object : TokenProvider {
            override fun token(refused: Boolean): String {
                asks += refused
                return current
            }
        }
        val sync = FieldSync.open(server.databasePath("tokens"), server.url, provider).also { opened += it }
        assertEquals(listOf(false), asks.toList(), "asked at open")
        sync.syncNow()
        val id = sync.list("bookings", limit = 1).first().id
        sync.put("bookings", id, "notes" to "after rotation")

        current = server.rotateToken("tech-a")
        val report = sync.syncNow()
        assertEquals(listOf(false, true), asks.toList(), "asked once more, after the 401")
        assertEquals(1L, report.uploaded)
        assertEquals(0L, sync.pendingUploads())
        assertTrue(server.record(current, "bookings", id).contains("after rotation"))
    }

    private companion object {
        const val T0 = 1_800_000_000_000L
        const val DAY = 86_400_000L
    }
}
