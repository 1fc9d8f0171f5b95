package dev.fieldsync.android

import android.app.job.JobInfo
import android.net.NetworkCapabilities
import dev.fieldsync.BackgroundJob
import dev.fieldsync.BackgroundJobOutcome
import dev.fieldsync.Blocker
import dev.fieldsync.NetworkType
import dev.fieldsync.Reachability
import dev.fieldsync.TestClock
import kotlinx.coroutines.runBlocking
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNull
import org.junit.Assert.assertSame
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.robolectric.Robolectric
import org.robolectric.RobolectricTestRunner
import org.robolectric.Shadows.shadowOf
import org.robolectric.annotation.Config

/**
 * The Android shell on Robolectric's framework (SDK 35) against the real
 * core and a real server on loopback: what the OS reports reaches the
 * core, and the JobScheduler jobs are the ones the core plans.
 */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [35])
class AndroidShellTest {
    private val harnesses = mutableListOf<AndroidHarness>()

    private fun harness(workOrders: Int = 20, clock: TestClock? = null) =
        AndroidHarness(workOrders = workOrders, clock = clock).also { harnesses += it }

    @After
    fun tearDown() = harnesses.forEach { it.close() }

    @Test
    fun `a connectivity change reaches the core's status`() {
        val h = harness()
        h.install()
        h.network(NetworkCapabilities.TRANSPORT_WIFI, metered = false)
        var os = h.fieldSync.engine.networkStatus().os
        assertTrue(os.connected)
        assertFalse(os.metered)
        assertEquals(NetworkType.WIFI, os.networkType)
        // The status listeners see it too (the sync icon follows the OS).
        h.eventually("the status shows Wi-Fi") {
            h.fieldSync.status.value.network.os.networkType == NetworkType.WIFI
        }

        h.network(NetworkCapabilities.TRANSPORT_CELLULAR, metered = true)
        os = h.fieldSync.engine.networkStatus().os
        assertTrue(os.connected)
        assertTrue(os.metered)
        assertEquals(NetworkType.CELLULAR, os.networkType)

        // Connected but not validated (a captive portal): not connected for the core.
        h.network(NetworkCapabilities.TRANSPORT_WIFI, metered = false, validated = false)
        assertFalse(h.fieldSync.engine.networkStatus().os.connected)

        h.networkLost()
        val lost = h.fieldSync.engine.networkStatus()
        assertFalse(lost.os.connected)
        assertEquals(Reachability.UNAVAILABLE, lost.reachability)
        h.eventually("the status shows the network lost") {
            h.fieldSync.status.value.network.reachability == Reachability.UNAVAILABLE &&
                !h.fieldSync.status.value.network.os.connected
        }
    }

    @Test
    fun `the app's foreground state reaches the core`() {
        val h = harness()
        h.install()
        h.eventually("a fresh process without activities is in the background") { !h.fieldSync.status.value.appActive }
        val activity = h.openApp()
        h.eventually("the app is active") { h.fieldSync.status.value.appActive }
        // A rotation (the activity recreated) is not a trip to the background.
        activity.configurationChange(android.content.res.Configuration().apply { orientation = 2 })
        assertTrue(h.fieldSync.status.value.appActive)
        h.leaveApp()
        h.eventually("the app is in the background") { !h.fieldSync.status.value.appActive }

        // Installed while a screen is visible: active at once. (Closing twice is harmless.)
        h.shell!!.close()
        h.shell!!.close()
        assertNull(FieldSyncAndroid.installed)
        h.install(importance = android.app.ActivityManager.RunningAppProcessInfo.IMPORTANCE_FOREGROUND)
        h.eventually("a visible process is active") { h.fieldSync.status.value.appActive }
    }

    @Test
    fun `going to the background starts no new sync while the running one completes through the job`() {
        val h = harness(workOrders = 30)
        h.install()
        h.network(NetworkCapabilities.TRANSPORT_WIFI, metered = false)
        h.proxy.holdPullsAfter(1)
        h.openApp()
        // The core starts the initial sync on its own; it stops at the gate.
        assertTrue("the initial sync reached its second page", h.proxy.awaitHeld())
        assertNotNull("a sync is running", h.fieldSync.status.value.progress ?: run {
            h.eventually("the status shows the sync") { h.fieldSync.status.value.progress != null }
            h.fieldSync.status.value.progress
        })
        assertNull("no job while the app is in the foreground", h.jobScheduler.getPendingJob(SyncJobs.FINISH_JOB_ID))

        h.leaveApp()
        h.eventually("the core plans a job to finish the sync") { h.jobScheduler.getPendingJob(SyncJobs.FINISH_JOB_ID) != null }
        val job = h.jobScheduler.getPendingJob(SyncJobs.FINISH_JOB_ID)!!
        @Suppress("DEPRECATION")
        assertEquals("the job needs a network", JobInfo.NETWORK_TYPE_ANY, job.networkType)
        assertFalse(job.isPeriodic)
        assertFalse(job.isPersisted)
        // The user's "sync now" while in the background is held by the core, too.
        h.fieldSync.requestSync()

        // The system starts the job; the sync goes on and completes.
        val service = Robolectric.setupService(FieldSyncJobService::class.java)
        assertTrue("the job keeps running while the sync runs", service.onStartJob(jobParameters(SyncJobs.FINISH_JOB_ID)))
        h.proxy.release()
        h.eventually("the job finished") { shadowOf(service).isJobFinished }
        assertFalse(shadowOf(service).isRescheduleNeeded)

        val status = runBlocking { h.fieldSync.status() }
        assertTrue("every table finished its initial sync", status.tables.all { it.initialSyncDone })
        assertTrue(runBlocking { h.fieldSync.count("work_orders") } > 0)
        h.eventually("the scheduler waits for the app") { h.fieldSync.status.value.waitingFor == Blocker.APP_INACTIVE }
        assertEquals("one sync: the running one; none started in the background", 1, h.syncsStarted())
        assertFalse(h.fieldSync.status.value.background.finishRunningSync)
        // A job started after the sync ended finds nothing to do.
        assertEquals(
            BackgroundJobOutcome.Idle(null),
            runBlocking { h.fieldSync.runBackgroundJob(BackgroundJob.FINISH_RUNNING_SYNC) },
        )
        assertEquals(1, h.syncsStarted())
    }

    @Test
    fun `the opt-in periodic job carries the core's interval and network constraint`() {
        val clock = TestClock(1_700_000_000_000)
        val h = harness(clock = clock)
        h.install()
        h.network(NetworkCapabilities.TRANSPORT_WIFI, metered = false)
        h.openApp()
        h.eventually("the initial sync completed") { runBlocking { h.fieldSync.status() }.tables.let { t -> t.isNotEmpty() && t.all { it.initialSyncDone } } }
        assertNull("off by default", h.jobScheduler.getPendingJob(SyncJobs.PERIODIC_JOB_ID))

        h.fieldSync.backgroundSync = true
        h.eventually("the periodic job is scheduled") { h.jobScheduler.getPendingJob(SyncJobs.PERIODIC_JOB_ID) != null }
        val plan = h.fieldSync.status.value.background.periodic!!
        var job = h.jobScheduler.getPendingJob(SyncJobs.PERIODIC_JOB_ID)!!
        assertTrue(job.isPeriodic)
        assertTrue("survives a reboot", job.isPersisted)
        assertEquals("the core's interval (or the OS floor)", maxOf(plan.intervalMs, JobInfo.getMinPeriodMillis()), job.intervalMillis)
        @Suppress("DEPRECATION")
        assertEquals(JobInfo.NETWORK_TYPE_ANY, job.networkType)
        // A new process applies the same plan: the job stays as it is (its period is not restarted).
        SyncJobs(h.application).apply(h.fieldSync.status.value.background)
        assertSame(job, h.jobScheduler.getPendingJob(SyncJobs.PERIODIC_JOB_ID))

        // Wi-Fi only: the core asks for an unmetered network.
        h.fieldSync.wifiOnly = true
        h.eventually("the job needs an unmetered network") {
            @Suppress("DEPRECATION")
            h.jobScheduler.getPendingJob(SyncJobs.PERIODIC_JOB_ID)?.networkType == JobInfo.NETWORK_TYPE_UNMETERED
        }
        job = h.jobScheduler.getPendingJob(SyncJobs.PERIODIC_JOB_ID)!!
        assertEquals(maxOf(plan.intervalMs, JobInfo.getMinPeriodMillis()), job.intervalMillis)

        // In the background, once the interval passed, the job syncs.
        h.leaveApp()
        h.eventually("in the background") { !h.fieldSync.status.value.appActive }
        val before = h.syncsStarted()
        clock.advance(plan.intervalMs)
        val service = Robolectric.setupService(FieldSyncJobService::class.java)
        assertTrue(service.onStartJob(jobParameters(SyncJobs.PERIODIC_JOB_ID)))
        h.eventually("the periodic job finished") { shadowOf(service).isJobFinished }
        assertFalse(shadowOf(service).isRescheduleNeeded)
        assertEquals("the periodic job ran one sync in the background", before + 1, h.syncsStarted())

        // In a process the OS starts for the job, the job waits for the app to install the shell.
        h.shell!!.close()
        clock.advance(plan.intervalMs)
        val cold = Robolectric.setupService(FieldSyncJobService::class.java)
        assertTrue(cold.onStartJob(jobParameters(SyncJobs.PERIODIC_JOB_ID)))
        assertFalse("no shell yet: the job waits", shadowOf(cold).isJobFinished)
        assertEquals(before + 1, h.syncsStarted())
        h.install()
        h.eventually("the cold job finished") { shadowOf(cold).isJobFinished }
        assertEquals("the cold job ran its sync", before + 2, h.syncsStarted())

        // Off again: the job is gone, and a job the OS still starts syncs nothing.
        h.fieldSync.backgroundSync = false
        h.eventually("the periodic job is cancelled") { h.jobScheduler.getPendingJob(SyncJobs.PERIODIC_JOB_ID) == null }
        clock.advance(plan.intervalMs)
        assertEquals(
            BackgroundJobOutcome.Idle(Blocker.APP_INACTIVE),
            runBlocking { h.fieldSync.runBackgroundJob(BackgroundJob.PERIODIC) },
        )
        assertEquals(before + 2, h.syncsStarted())
    }
}
