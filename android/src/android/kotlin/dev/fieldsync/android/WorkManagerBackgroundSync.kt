package dev.fieldsync.android

import android.content.Context
import androidx.work.Constraints
import androidx.work.CoroutineWorker
import androidx.work.ExistingPeriodicWorkPolicy
import androidx.work.NetworkType
import androidx.work.PeriodicWorkRequestBuilder
import androidx.work.WorkManager
import androidx.work.WorkerParameters
import dev.fieldsync.FieldSync
import dev.fieldsync.platform.BackgroundSync
import dev.fieldsync.platform.BackgroundSyncRequest
import dev.fieldsync.platform.BackgroundSyncResult
import dev.fieldsync.platform.BackgroundSyncScheduler
import dev.fieldsync.platform.ConnectivityMonitor
import java.util.concurrent.TimeUnit

/** Implemented by the app's Application class so the background job finds the engine. */
interface FieldSyncHost {
    /** The open engine of the signed-in user, or null when nobody is signed in. */
    val fieldSync: FieldSync?

    /** The app's connectivity monitor. */
    val connectivity: ConnectivityMonitor
}

/**
 * [BackgroundSyncScheduler] with WorkManager: a unique periodic job that needs
 * a connected network, an unmetered one when Wi-Fi only is on. WorkManager
 * lets the job run to its end (up to 10 minutes), so a started sync finishes
 * in the background.
 */
class WorkManagerBackgroundSyncScheduler(private val context: Context) : BackgroundSyncScheduler {
    override fun schedule(request: BackgroundSyncRequest) {
        val constraints = Constraints.Builder()
            .setRequiredNetworkType(if (request.unmeteredOnly) NetworkType.UNMETERED else NetworkType.CONNECTED)
            .build()
        val work = PeriodicWorkRequestBuilder<FieldSyncWorker>(request.intervalMinutes.coerceAtLeast(15), TimeUnit.MINUTES)
            .setConstraints(constraints)
            .build()
        WorkManager.getInstance(context).enqueueUniquePeriodicWork(WORK_NAME, ExistingPeriodicWorkPolicy.UPDATE, work)
    }

    override fun cancel() {
        WorkManager.getInstance(context).cancelUniqueWork(WORK_NAME)
    }

    companion object {
        /** Name of the unique periodic job. */
        const val WORK_NAME = "fieldsync-background-sync"
    }
}

/** The background job: one [BackgroundSync.run] with the app's engine. */
class FieldSyncWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val host = applicationContext as? FieldSyncHost ?: return Result.failure()
        val sync = host.fieldSync ?: return Result.success()
        return when (BackgroundSync.run(sync, host.connectivity)) {
            is BackgroundSyncResult.Done, BackgroundSyncResult.Skipped -> Result.success()
            is BackgroundSyncResult.Retry -> Result.retry()
            is BackgroundSyncResult.Failed -> Result.failure()
        }
    }
}
