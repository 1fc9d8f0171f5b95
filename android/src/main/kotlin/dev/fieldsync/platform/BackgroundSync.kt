package dev.fieldsync.platform

import dev.fieldsync.FieldSync
import dev.fieldsync.FieldSyncException
import dev.fieldsync.SyncReport

/** How a background run ended; the OS job maps it to its own result. */
sealed class BackgroundSyncResult {
    /** The core's scheduler ran a sync to its end. */
    data class Done(val report: SyncReport) : BackgroundSyncResult()

    /** The core's scheduler started nothing (nothing due, or not allowed now). */
    object Skipped : BackgroundSyncResult()

    /** Network or Service Unavailable: the OS should retry later. */
    data class Retry(val reason: String) : BackgroundSyncResult()

    /** A failure a retry will not cure (credentials refused, storage). */
    data class Failed(val error: FieldSyncException) : BackgroundSyncResult()
}

/**
 * The body of the OS background job: the current network is reported, then
 * one step of the core's scheduler runs whatever is due (the core applies Wi-Fi
 * only, intervals and backoff). A sync that started runs to its end.
 */
object BackgroundSync {
    /** Runs one scheduler step with [fieldSync] on the network [connectivity] reports. */
    suspend fun run(fieldSync: FieldSync, connectivity: ConnectivityMonitor): BackgroundSyncResult {
        val network = connectivity.state.value
        fieldSync.setNetwork(network.up, network.metered, network.type)
        return try {
            if (network.up) fieldSync.checkNetwork()
            val ran = fieldSync.runDue() ?: return BackgroundSyncResult.Skipped
            BackgroundSyncResult.Done(ran.report)
        } catch (e: FieldSyncException.NetworkUnavailable) {
            BackgroundSyncResult.Retry(e.reason)
        } catch (e: FieldSyncException) {
            BackgroundSyncResult.Failed(e)
        }
    }
}
