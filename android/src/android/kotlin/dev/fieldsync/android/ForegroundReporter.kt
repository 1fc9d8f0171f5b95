package dev.fieldsync.android

import android.app.Activity
import android.app.ActivityManager
import android.app.Application
import android.os.Bundle
import dev.fieldsync.FieldSync

/**
 * Reports the app's foreground state to the core from the application's
 * activity lifecycle callbacks: active while at least one activity is
 * started. A configuration change (an activity stopped to be recreated at
 * once) reports nothing. The core decides what follows (no new sync in the
 * background; a running one finishes).
 */
internal class ForegroundReporter(
    private val application: Application,
    private val fieldSync: FieldSync,
) : Application.ActivityLifecycleCallbacks {
    private var started = 0

    /** Reports the state now (the process may have started for a job) and starts listening. */
    fun start() {
        val process = ActivityManager.RunningAppProcessInfo()
        ActivityManager.getMyMemoryState(process)
        val visible = process.importance <= ActivityManager.RunningAppProcessInfo.IMPORTANCE_VISIBLE &&
            process.importance > 0
        fieldSync.setAppActive(visible)
        application.registerActivityLifecycleCallbacks(this)
    }

    /** Stops listening. */
    fun stop() = application.unregisterActivityLifecycleCallbacks(this)

    override fun onActivityStarted(activity: Activity) {
        started += 1
        if (started == 1) fieldSync.setAppActive(true)
    }

    override fun onActivityStopped(activity: Activity) {
        started = (started - 1).coerceAtLeast(0)
        if (started == 0 && !activity.isChangingConfigurations) fieldSync.setAppActive(false)
    }

    override fun onActivityCreated(activity: Activity, savedInstanceState: Bundle?) = Unit
    override fun onActivityResumed(activity: Activity) = Unit
    override fun onActivityPaused(activity: Activity) = Unit
    override fun onActivitySaveInstanceState(activity: Activity, outState: Bundle) = Unit
    override fun onActivityDestroyed(activity: Activity) = Unit
}
