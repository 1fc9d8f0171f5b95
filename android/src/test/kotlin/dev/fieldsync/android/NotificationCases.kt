package dev.fieldsync.android

import android.Manifest
import android.app.Notification
import android.app.NotificationManager
import android.net.NetworkCapabilities
import android.os.Build
import dev.fieldsync.NotificationKind
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.robolectric.RobolectricTestRunner
import org.robolectric.Shadows.shadowOf
import org.robolectric.annotation.Config

/**
 * The initial-sync notification as the user sees it: posted with progress
 * while the core's initial sync runs (held mid-way at the gate), then its
 * completion. Run at SDK 24 (the library's minSdk, no notification
 * channels) and SDK 35 (a channel).
 */
abstract class NotificationCases {
    private lateinit var h: AndroidHarness

    @After
    fun tearDown() = h.close()

    private val manager get() = h.application.service<NotificationManager>()

    private fun posted(): Notification? = shadowOf(manager).allNotifications.singleOrNull()

    @Test
    fun `the initial sync notification shows progress then completion`() {
        h = AndroidHarness(workOrders = 30, pageSize = 5)
        if (Build.VERSION.SDK_INT >= 33) shadowOf(h.application).grantPermissions(Manifest.permission.POST_NOTIFICATIONS)
        h.install()
        checkChannels()
        h.network(NetworkCapabilities.TRANSPORT_WIFI, metered = false)
        h.proxy.holdPullsAfter(2)
        h.openApp()
        assertTrue("the initial sync is held after its first pages", h.proxy.awaitHeld())

        h.eventually("a progress notification with rows done") {
            posted()?.extras?.getInt(Notification.EXTRA_PROGRESS, 0)?.let { it > 0 } == true
        }
        val progress = posted()!!
        assertEquals("one notification, the initial sync's", 1, shadowOf(manager).allNotifications.size)
        assertTrue(
            "posted as the initial sync's",
            shadowOf(manager).getNotification(SyncNotifications.TAG, SyncNotifications.idOf(NotificationKind.INITIAL_SYNC)) != null,
        )
        assertTrue("ongoing while it runs", progress.flags and Notification.FLAG_ONGOING_EVENT != 0)
        assertEquals(100, progress.extras.getInt(Notification.EXTRA_PROGRESS_MAX))
        assertFalse(progress.extras.getBoolean(Notification.EXTRA_PROGRESS_INDETERMINATE))
        val running = progress.extras.getCharSequence(Notification.EXTRA_TITLE).toString()
        assertTrue(running, running.isNotBlank())
        checkChannelOf(progress)

        h.proxy.release()
        h.eventually("the completion notification") {
            posted()?.let { it.flags and Notification.FLAG_ONGOING_EVENT == 0 } == true
        }
        val done = posted()!!
        val title = done.extras.getCharSequence(Notification.EXTRA_TITLE).toString()
        assertTrue("the core's completion message: $title", title != running && title.isNotBlank())
        assertTrue("dismissed by a tap", done.flags and Notification.FLAG_AUTO_CANCEL != 0)
        assertEquals(0, done.extras.getInt(Notification.EXTRA_PROGRESS_MAX))
        checkChannelOf(done)
    }

    @Test
    fun `without the permission nothing is posted and sync goes on`() {
        h = AndroidHarness(workOrders = 5)
        if (Build.VERSION.SDK_INT >= 33) {
            shadowOf(h.application).denyPermissions(Manifest.permission.POST_NOTIFICATIONS)
        } else {
            shadowOf(manager).setNotificationsEnabled(false)
        }
        h.install()
        h.network(NetworkCapabilities.TRANSPORT_WIFI, metered = false)
        h.openApp()
        h.eventually("the initial sync completed") {
            h.events.any { it is dev.fieldsync.SyncEvent.Notification && it.phase == dev.fieldsync.NotificationPhase.COMPLETED }
        }
        assertTrue(shadowOf(manager).allNotifications.isEmpty())
    }

    /** Channels: one, low importance, from API 26 only. */
    private fun checkChannels() {
        val channels = shadowOf(manager).notificationChannels
        if (Build.VERSION.SDK_INT < 26) {
            assertTrue("no channel below API 26", channels.isEmpty())
        } else {
            val channel = manager.getNotificationChannel(SyncNotifications.CHANNEL_ID)
            assertEquals(1, channels.size)
            assertEquals(NotificationManager.IMPORTANCE_LOW, channel.importance)
        }
    }

    private fun checkChannelOf(notification: Notification) {
        if (Build.VERSION.SDK_INT >= 26) assertEquals(SyncNotifications.CHANNEL_ID, notification.channelId)
    }
}

/** At the library's minSdk: a channel would crash here (the class does not exist). */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [24])
class NotificationSdk24Test : NotificationCases()

/** At a current SDK, with the channel. */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [35])
class NotificationSdk35Test : NotificationCases()
