package dev.fieldsync.platform

import dev.fieldsync.FieldSync
import dev.fieldsync.FieldSyncException
import dev.fieldsync.SyncReport

/** How a background sync run ended; the OS job maps it to its own result. */
sealed class BackgroundSyncResult {
    /** The sync ran to the end. */
    data class Done(val report: SyncReport) : BackgroundSyncResult()

    /** The network does not allow a sync now (down, or metered with Wi-Fi only). */
    object Skipped : BackgroundSyncResult()

    /** Network or Service Unavailable: the OS should retry later. */
    data class Retry(val reason: String) : BackgroundSyncResult()

    /** A failure a retry will not cure (credentials refused, storage). */
    data class Failed(val error: FieldSyncException) : BackgroundSyncResult()
}

/** Decides whether sync may start on [network] with the Wi-Fi only choice. */
fun networkAllowsSync(network: NetworkState, wifiOnly: Boolean): Boolean =
    network.up && !(wifiOnly && network.metered)

/**
 * The body of the OS background job: one sync of every table when the network
 * allows it. A sync that started runs to its end (the job waits for it).
 */
object BackgroundSync {
    /** Runs one background sync with [fieldSync]. */
    suspend fun run(fieldSync: FieldSync, connectivity: ConnectivityMonitor, wifiOnly: Boolean): BackgroundSyncResult {
        if (!networkAllowsSync(connectivity.state.value, wifiOnly)) return BackgroundSyncResult.Skipped
        return try {
            BackgroundSyncResult.Done(fieldSync.syncNow())
        } catch (e: FieldSyncException.NetworkUnavailable) {
            BackgroundSyncResult.Retry(e.reason)
        } catch (e: FieldSyncException) {
            BackgroundSyncResult.Failed(e)
        }
    }
}
