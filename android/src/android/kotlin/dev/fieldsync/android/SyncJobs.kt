package dev.fieldsync.android

import android.app.job.JobInfo
import android.app.job.JobParameters
import android.app.job.JobScheduler
import android.app.job.JobService
import android.content.ComponentName
import android.content.Context
import dev.fieldsync.BackgroundJob
import dev.fieldsync.BackgroundJobOutcome
import dev.fieldsync.BackgroundPlan
import dev.fieldsync.FieldSyncException
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.filterNotNull
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import java.util.concurrent.ConcurrentHashMap

/**
 * Keeps JobScheduler's jobs as the core's [BackgroundPlan] says: a one-off
 * job that needs a network while a sync started in the foreground runs on
 * in the background, and the opt-in periodic job with the core's interval,
 * unmetered when the core says so. Both run [FieldSyncJobService].
 */
internal class SyncJobs(context: Context) {
    private val scheduler = context.systemService<JobScheduler>()
    private val service = ComponentName(context, FieldSyncJobService::class.java)

    /** Brings the scheduled jobs in line with [plan]. */
    fun apply(plan: BackgroundPlan) {
        if (plan.finishRunningSync && scheduler.getPendingJob(FINISH_JOB_ID) == null) {
            // One scheduled or running already stays (scheduling it again would stop it).
            scheduler.schedule(
                JobInfo.Builder(FINISH_JOB_ID, service)
                    .setRequiredNetworkType(JobInfo.NETWORK_TYPE_ANY)
                    .build(),
            )
        }
        val periodic = plan.periodic
        if (periodic == null) {
            if (scheduler.getPendingJob(PERIODIC_JOB_ID) != null) scheduler.cancel(PERIODIC_JOB_ID)
            return
        }
        val network = if (periodic.unmeteredOnly) JobInfo.NETWORK_TYPE_UNMETERED else JobInfo.NETWORK_TYPE_ANY
        val wanted = JobInfo.Builder(PERIODIC_JOB_ID, service)
            .setPeriodic(periodic.intervalMs)
            .setRequiredNetworkType(network)
            .setPersisted(true)
            .build()
        // The same job (as the OS keeps it) stays, so its period is not restarted.
        val pending = scheduler.getPendingJob(PERIODIC_JOB_ID)
        @Suppress("DEPRECATION") // getNetworkType: the only form before API 28.
        if (pending != null && pending.intervalMillis == wanted.intervalMillis && pending.networkType == network) return
        scheduler.schedule(wanted)
    }

    /** Cancels both jobs (the user signed out). */
    fun cancelAll() {
        scheduler.cancel(FINISH_JOB_ID)
        scheduler.cancel(PERIODIC_JOB_ID)
    }

    companion object {
        /** Id of the job that lets a running sync finish in the background. */
        const val FINISH_JOB_ID = 0x5f5c_0001

        /** Id of the opt-in periodic background sync job. */
        const val PERIODIC_JOB_ID = 0x5f5c_0002

        internal fun jobOf(id: Int): BackgroundJob? = when (id) {
            FINISH_JOB_ID -> BackgroundJob.FINISH_RUNNING_SYNC
            PERIODIC_JOB_ID -> BackgroundJob.PERIODIC
            else -> null
        }
    }
}

/**
 * Runs the core's body of a background job ([dev.fieldsync.FieldSync.runBackgroundJob])
 * with the engine of the installed [FieldSyncAndroid]. Declared in the
 * library's manifest (BIND_JOB_SERVICE). In a process the OS started for
 * the job, the job waits for the app to install the shell (as its
 * `Application.onCreate` does once the user's engine is open); the OS
 * stops it at its own limit otherwise.
 */
class FieldSyncJobService : JobService() {
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
    private val running = ConcurrentHashMap<Int, Job>()

    override fun onStartJob(params: JobParameters): Boolean {
        val job = SyncJobs.jobOf(params.jobId) ?: return false
        running[params.jobId] = scope.launch {
            val reschedule = try {
                val shell = FieldSyncAndroid.installations.filterNotNull().first()
                val outcome = shell.runJob(job)
                outcome is BackgroundJobOutcome.Failed && outcome.retry
            } catch (e: FieldSyncException) {
                // The core logged it; the next job or sync tries again.
                false
            } catch (e: IllegalStateException) {
                // The user signed out meanwhile (the engine is closed).
                false
            } finally {
                running.remove(params.jobId)
            }
            jobFinished(params, reschedule)
        }
        return true
    }

    override fun onStopJob(params: JobParameters): Boolean {
        // The OS ends the job (its time or its network is gone). A sync the
        // job started is cut off and resumes from its last page next time.
        running.remove(params.jobId)?.cancel()
        return false
    }

    override fun onDestroy() {
        scope.cancel()
        super.onDestroy()
    }
}
