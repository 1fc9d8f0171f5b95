package dev.fieldsync

import dev.fieldsync.platform.AppLifecycle
import dev.fieldsync.platform.BackgroundSyncScheduler
import dev.fieldsync.platform.ConnectivityMonitor
import dev.fieldsync.platform.FieldSyncShell
import dev.fieldsync.platform.NetworkState
import dev.fieldsync.platform.SyncNotificationPresenter
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test

// --- README example: begin (kept in the README; compiled and run here) ---
suspend fun readmeExample(
    databasePath: String, serverUrl: String, token: String,
    connectivity: ConnectivityMonitor, lifecycle: AppLifecycle,
    scheduler: BackgroundSyncScheduler, notifications: SyncNotificationPresenter,
    scope: CoroutineScope,
): String? {
    // Open the engine: one per user database; reads and writes work offline.
    val sync = FieldSync.open(databasePath, serverUrl, token)

    // Observe status: a sync icon and the Offline Status of each table.
    val statusJob = scope.launch {
        sync.statusUpdates().collect { update ->
            val icon = when {
                update.syncing -> "syncing"
                update.event is SyncEvent.SyncFailed -> "error"
                update.device.pendingUploads > 0 -> "pending uploads"
                else -> "up to date"
            }
            println("$icon: ${update.device.tables.map { "${it.table} ${it.rows} rows" }}")
        }
    }

    // Schedule background sync (WorkManager on Android, unmetered when Wi-Fi only),
    // and sync when the app comes to the foreground on an allowed network.
    val shell = FieldSyncShell(sync, connectivity, lifecycle, scheduler, notifications, scope)
    shell.wifiOnly = true
    shell.start()

    // Sync now, then read and write records with typed errors.
    sync.syncNow()
    sync.put("bookings", "bk-0000001", "notes" to "Replaced the filter", "travel_minutes" to 25)
    val notes = try {
        sync.get("bookings", "bk-0000001").text("notes")
    } catch (e: FieldSyncException.RecordNotFound) {
        null // no longer on this device (it left the offline profile)
    }
    // When the user signs out:
    statusJob.cancel()
    shell.stop()
    sync.close()
    return notes
}
// --- README example: end ---

class ReadmeExampleTest {
    @Test
    fun `the README example runs against a real server`() = runBlocking<Unit> {
        TestServer.start().use { server ->
            val token = server.user("tech-a", "technician")
            server.seed(listOf("tech-a"), 5)
            val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
            val notes = readmeExample(
                server.databasePath("readme"), server.url, token,
                FakeConnectivity(NetworkState(up = true, metered = false)), FakeLifecycle(false),
                FakeScheduler(), FakeNotifications(), scope,
            )
            scope.cancel()
            assertEquals("Replaced the filter", notes)
            FieldSync.open(server.databasePath("readme"), server.url, token).use { again ->
                assertEquals(1L, again.status().pendingUploads)
                again.syncNow()
                assertEquals(0L, again.pendingUploads())
            }
        }
    }
}
