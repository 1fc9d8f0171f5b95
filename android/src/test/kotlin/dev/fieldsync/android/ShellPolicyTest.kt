package dev.fieldsync.android

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File

/**
 * The shell's Kotlin decides no interval, no Wi-Fi rule and no frequency:
 * those live in the core (the scheduler and its background plan). This
 * searches every Kotlin file of the Android shell (src/android/kotlin) and
 * the facade (src/main/kotlin) with comments and string literals removed,
 * and fails on a line that compares network kinds or tests meteredness,
 * does arithmetic on an interval, names a time unit or a duration literal,
 * or, in the shell (the facade exposes the settings and sync calls), reads
 * a sync setting, names Wi-Fi or starts a sync itself. It first proves that it catches
 * such lines, taken from the shell this one replaced.
 */
class ShellPolicyTest {
    private class Rule(val name: String, val pattern: Regex, val shellOnly: Boolean = false)

    private val rules = listOf(
        Rule("reads a sync setting", Regex("""\b(wifiOnly|frequency|SyncFrequency|smartSync|backgroundSync|settings)\b"""), shellOnly = true),
        Rule("starts a sync itself", Regex("""\.(syncNow|requestSync|requestRefresh|runDue|trySyncNow|refresh|syncTables)\s*\("""), shellOnly = true),
        Rule("decides on Wi-Fi", Regex("""(?i)wi-?fi"""), shellOnly = true),
        Rule("compares network kinds", Regex("""NetworkType\.\w+\s*[!=]=|[!=]=\s*NetworkType\.|isActiveNetworkMetered|\bif\s*\(.*\bmetered\b""")),
        Rule("does arithmetic on an interval", Regex("""(?i)\w*interval\w*\s*[-+*/<>]|[-+*/<>]=?\s*\w*interval|(maxOf|minOf|coerce\w*)\s*\([^)]*interval|interval\w*\s*\.\s*coerce""")),
        Rule("names a time unit or duration", Regex("""TimeUnit\.|\bDuration\b|\.(minutes|hours|seconds|milliseconds|days)\b|AlarmManager|postDelayed|\bdelay\s*\(|setMinimumLatency|setOverrideDeadline""")),
        Rule("sets a duration literal", Regex("""(?i)\b\w*(interval|period|minutes|hours|seconds|secs|millis|ms|delay)\s*(:\s*\w+\s*)?=\s*\d|\b\d[\d_]*L?\s*\*\s*(60|1000)\b|setPeriodic\s*\(\s*\d""")),
    )

    /** The code of a Kotlin file: comments and string literals blanked, lines kept. */
    private fun code(text: String): List<String> {
        val out = StringBuilder()
        var i = 0
        while (i < text.length) {
            when {
                text.startsWith("//", i) -> while (i < text.length && text[i] != '\n') i++
                text.startsWith("/*", i) -> {
                    val end = text.indexOf("*/", i + 2).let { if (it < 0) text.length else it + 2 }
                    text.substring(i, end).forEach { if (it == '\n') out.append('\n') }
                    i = end
                }
                text.startsWith("\"\"\"", i) -> {
                    val end = text.indexOf("\"\"\"", i + 3).let { if (it < 0) text.length else it + 3 }
                    text.substring(i, end).forEach { if (it == '\n') out.append('\n') }
                    out.append("\"\"")
                    i = end
                }
                text[i] == '"' -> {
                    i++
                    while (i < text.length && text[i] != '"' && text[i] != '\n') i += if (text[i] == '\\') 2 else 1
                    i++
                    out.append("\"\"")
                }
                else -> out.append(text[i++])
            }
        }
        return out.lines()
    }

    /** The one line that may name Wi-Fi: the OS's transport reported as the core's network type. */
    private val transportReport = Regex("""hasTransport\(NetworkCapabilities\.TRANSPORT_WIFI\)\s*->\s*NetworkType\.WIFI""")

    private fun violations(text: String, shell: Boolean): List<String> =
        code(text).withIndex().flatMap { (n, line) ->
            rules.filter { (shell || !it.shellOnly) && it.pattern.containsMatchIn(line) }
                .filterNot { it.name == "decides on Wi-Fi" && transportReport.containsMatchIn(line) }
                .map { "line ${n + 1}: ${it.name}: ${line.trim()}" }
        }

    private fun kotlinFiles(dir: String): List<File> {
        val base = System.getProperty("fieldsync.android.dir")?.let(::File) ?: File(".")
        return File(base, dir).walkTopDown().filter { it.isFile && it.extension == "kt" }.toList()
    }

    @Test
    fun `the search catches interval, Wi-Fi and frequency decisions`() {
        val planted = mapOf(
            "val work = PeriodicWorkRequestBuilder<FieldSyncWorker>(request.intervalMinutes.coerceAtLeast(15), TimeUnit.MINUTES)" to
                "does arithmetic on an interval",
            "scheduler.schedule(BackgroundSyncRequest(backgroundIntervalMinutes, unmeteredOnly = fieldSync.wifiOnly))" to "reads a sync setting",
            "private val backgroundIntervalMinutes: Long = 60" to "sets a duration literal",
            "if (state.type == NetworkType.WIFI) fieldSync.runDue()" to "compares network kinds",
            "if (!caps.hasCapability(NET_CAPABILITY_NOT_METERED) && settings.frequency != SyncFrequency.Auto) return" to "reads a sync setting",
            "builder.setPeriodic(15 * 60 * 1000L)" to "sets a duration literal",
            "if (metered) return BackgroundSyncResult.Skipped" to "compares network kinds",
            "val onWifi = caps.hasTransport(NetworkCapabilities.TRANSPORT_WIFI)" to "decides on Wi-Fi",
            "scope.launch { delay(30_000); sync.requestSync() }" to "starts a sync itself",
        )
        for ((line, rule) in planted) {
            val found = violations(line, shell = true)
            assertTrue(found.any { it.contains(rule) }, "not caught ($rule): $line -> $found")
        }
        // Comments and user-visible text are not code.
        assertEquals(emptyList<String>(), violations("// runs every 15 minutes on Wi-Fi only\nval name = \"Wi-Fi only\"", shell = true))
    }

    @Test
    fun `the shell's Kotlin makes no interval, Wi-Fi or frequency decision`() {
        val shell = kotlinFiles("src/android/kotlin")
        val facade = kotlinFiles("src/main/kotlin")
        val names = shell.map { it.name }.toSet()
        assertTrue(
            names.containsAll(setOf("FieldSyncAndroid.kt", "NetworkReporter.kt", "ForegroundReporter.kt", "SyncJobs.kt", "SyncNotifications.kt")),
            "the shell's files were found: $names",
        )
        assertTrue(facade.any { it.name == "FieldSync.kt" }, "the facade was found")
        val found = shell.flatMap { f -> violations(f.readText(), shell = true).map { "${f.name} $it" } } +
            facade.flatMap { f -> violations(f.readText(), shell = false).map { "${f.name} $it" } }
        assertEquals(emptyList<String>(), found, "decisions that belong to the core")
        // The one Wi-Fi line the shell has is the transport report.
        assertTrue(shell.any { f -> code(f.readText()).any { transportReport.containsMatchIn(it) } })
    }
}
