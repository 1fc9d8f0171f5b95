package dev.fieldsync

import android.app.Application
import dev.fieldsync.android.FieldSyncAndroid
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.annotation.Config

// --- README example: begin (kept in the README; compiled and run here) ---
suspend fun readmeExample(
    application: Application, databasePath: String, serverUrl: String, tokenProvider: TokenProvider,
    scope: CoroutineScope,
): String? {
    // Open the engine: one per user database; reads and writes work offline.
    // The token provider is asked now, and again whenever the server refuses the token.
    val sync = FieldSync.open(databasePath, serverUrl, tokenProvider)

    // The sync icon: a StateFlow, current at once and on every change (a local edit too).
    val statusJob = scope.launch {
        sync.status.collect { status ->
            val icon = when (status.icon) {
                SyncIcon.SYNCING -> "syncing ${status.progress?.rowsDone}/${status.progress?.rowsTotal ?: "?"} rows"
                SyncIcon.NOT_CONNECTED -> "offline: ${status.message}"
                SyncIcon.ERROR -> "error: ${status.message}"
                SyncIcon.WARNING -> "see Sync Errors: ${status.message}"
                SyncIcon.PENDING_UPLOADS -> "${status.pendingUploads} change(s) waiting for upload"
                SyncIcon.CONNECTED -> "up to date"
            }
            println(icon)
        }
    }

    // Settings are properties, kept in the device database.
    sync.wifiOnly = true

    // The Android shell (for example in Application.onCreate) reports the app's
    // foreground state and the network, schedules the jobs the core plans and
    // shows the core's notifications; the core's sync service decides when to sync.
    val shell = FieldSyncAndroid.install(application, sync, android.R.drawable.stat_notify_sync)

    // Sync now, then read and write records with typed errors.
    sync.syncNow()
    sync.put("bookings", "bk-0000001", "notes" to "Replaced the filter", "travel_minutes" to 25)
    val notes = try {
        sync.get("bookings", "bk-0000001").text("notes")
    } catch (e: FieldSyncException.RecordNotFound) {
        null // no longer on this device (it left the offline profile)
    }

    // A screen is a query over the device file: a condition in the profile's filter
    // language, an order, a limit. Observed, it comes again after every local write or
    // sync that changes its table (never for other tables).
    val open = """{"op": "ne", "column": "status", "value": "closed"}"""
    val byPriority = listOf(QueryOrder("priority", descending = true))
    val workOrders = sync.query("work_orders", where = open, orderBy = byPriority, limit = 20)
    val screenJob = scope.launch {
        sync.observe("work_orders", where = open, orderBy = byPriority).collect { rows -> println("${rows.size} open work orders") }
    }

    // Several writes, atomic on the device and applied by the server whole or not at all.
    val booking = sync.get("bookings", "bk-0000001")
    sync.transaction {
        insert("work_order_service_tasks", "task-bk-0000001", "work_order_id" to booking.text("work_order_id"), "task_name" to "Check the filter")
        update("bookings", booking.id, "travel_minutes" to 30)
    }
    println("${workOrders.size} work orders shown")
    // When the user signs out:
    screenJob.cancel()
    statusJob.cancel()
    shell.close()
    sync.close()
    return notes
}
// --- README example: end ---

/** Under Robolectric (SDK 35): the example installs the Android shell. */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [35])
class ReadmeExampleTest {
    @Test
    fun `the README's Kotlin section is this example`() {
        val readme = java.io.File("../README.md").readText()
        val section = readme.substringAfter("## Kotlin (Android)").substringAfter("```kotlin\n").substringBefore("```")
        val source = java.io.File("src/test/kotlin/dev/fieldsync/ReadmeExampleTest.kt").readLines().map { it.trim() }
        var at = 0
        for (line in section.lines().map { it.trim() }.filter { it.isNotEmpty() }) {
            val found = source.subList(at, source.size).indexOf(line)
            assertTrue("README line not in the compiled example (in order): $line", found >= 0)
            at += found + 1
        }
    }

    @Test
    fun `the README example runs against a real server`() = runBlocking<Unit> {
        TestServer.start().use { server ->
            val token = server.user("tech-a", "technician")
            server.seed(listOf("tech-a"), 5)
            val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
            val provider = object : TokenProvider {
                override fun token(refused: Boolean) = token
            }
            val notes = readmeExample(
                RuntimeEnvironment.getApplication(), server.databasePath("readme"), server.url, provider, scope,
            )
            scope.cancel()
            assertEquals("Replaced the filter", notes)
            FieldSync.open(server.databasePath("readme"), server.url, token).use { again ->
                // The put, and the transaction's two writes.
                assertEquals(3L, again.status.value.pendingUploads)
                again.syncNow()
                assertEquals(0L, again.pendingUploads())
            }
            val dispatcher = server.user("disp", "dispatcher")
            assertTrue(server.record(dispatcher, "work_order_service_tasks", "task-bk-0000001").contains("Check the filter"))
            assertTrue(server.record(dispatcher, "bookings", "bk-0000001").contains("\"travel_minutes\":30"))
        }
    }
}
