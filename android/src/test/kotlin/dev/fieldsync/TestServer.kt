package dev.fieldsync

import java.io.BufferedReader
import java.io.InputStreamReader
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.TimeUnit

/**
 * A real `fieldsync server` process on loopback with its own data directory,
 * and the admin and dispatcher HTTP calls the tests need (the same calls as
 * tests/common/mod.rs). Stopped by [close].
 */
class TestServer private constructor(
    private val process: Process,
    val url: String,
    private val dir: Path,
) : AutoCloseable {
    private val http = HttpClient.newHttpClient()

    companion object {
        const val ADMIN_TOKEN = "kotlin-test-admin-token-0123"

        /** Starts a server; [pullDelayMs] slows every pull page (a slow network). */
        fun start(pullDelayMs: Long = 0): TestServer {
            val bin = System.getProperty("fieldsync.bin") ?: error("system property fieldsync.bin is not set")
            val dir = Files.createTempDirectory("fieldsync-kotlin-server")
            val process = ProcessBuilder(
                bin, "server", "--listen", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN,
                "--data-dir", dir.resolve("server").toString(), "--pull-delay-ms", pullDelayMs.toString(),
            ).redirectError(ProcessBuilder.Redirect.INHERIT).start()
            val stdout = BufferedReader(InputStreamReader(process.inputStream))
            val line = stdout.readLine() ?: error("the server printed nothing (exit ${process.waitFor()})")
            // Keep draining stdout so the server never blocks on a full pipe.
            Thread { stdout.useLines { lines -> lines.forEach { _ -> } } }.apply { isDaemon = true }.start()
            val address = Regex("\"address\"\\s*:\\s*\"([^\"]+)\"").find(line)?.groupValues?.get(1)
                ?: error("no address in the server's first line: $line")
            check(line.contains("\"listening\"")) { "unexpected first line: $line" }
            return TestServer(process, "http://$address", dir)
        }
    }

    /** Calls the API; returns (status, body). */
    fun call(method: String, path: String, token: String?, body: String? = null): Pair<Int, String> {
        val req = HttpRequest.newBuilder(URI.create(url + path))
            .method(method, if (body == null) HttpRequest.BodyPublishers.noBody() else HttpRequest.BodyPublishers.ofString(body))
        if (token != null) req.header("authorization", "Bearer $token")
        if (body != null) req.header("content-type", "application/json")
        val resp = http.send(req.build(), HttpResponse.BodyHandlers.ofString())
        return resp.statusCode() to resp.body()
    }

    fun admin(method: String, path: String, body: String? = null): String {
        val (status, text) = call(method, path, ADMIN_TOKEN, body)
        check(status in 200..299) { "$method $path: $status $text" }
        return text
    }

    /** Creates a user with a role; returns its token. */
    fun user(id: String, role: String): String {
        val text = admin("POST", "/v1/admin/users", """{"id":"$id","name":"$id","role":"$role"}""")
        return Regex("\"token\"\\s*:\\s*\"([^\"]+)\"").find(text)?.groupValues?.get(1) ?: error("no token in $text")
    }

    /** Seeds work orders and bookings for the technicians. */
    fun seed(technicians: List<String>, workOrders: Int) {
        val techs = technicians.joinToString(",") { "\"$it\"" }
        admin("POST", "/v1/admin/seed", """{"technicians":[$techs],"work_orders":$workOrders,"seed":11}""")
    }

    fun setConflictDetection(on: Boolean) {
        admin("PUT", "/v1/admin/settings", """{"conflict_detection":$on}""")
    }

    /** A dispatcher's change of a record on the server. */
    fun dispatcherPut(token: String, table: String, id: String, dataJson: String) {
        val (status, text) = call("PUT", "/v1/records/$table/$id", token, """{"data":$dataJson}""")
        check(status == 200 || status == 201) { "dispatcher PUT $table/$id: $status $text" }
    }

    /** The record as the server has it (raw JSON). */
    fun record(token: String, table: String, id: String): String {
        val (status, text) = call("GET", "/v1/records/$table/$id", token)
        check(status == 200) { "GET $table/$id: $status $text" }
        return text
    }

    /** Rotates a user's token on the server (the old one is refused at once); returns the new one. */
    fun rotateToken(id: String): String {
        val text = admin("POST", "/v1/admin/users/$id/token")
        return Regex("\"token\"\\s*:\\s*\"([^\"]+)\"").find(text)?.groupValues?.get(1) ?: error("no token in $text")
    }

    /** A fresh database path in this server's temporary directory. */
    fun databasePath(name: String): String = dir.resolve("$name.db").toString()

    override fun close() {
        process.destroy()
        if (!process.waitFor(10, TimeUnit.SECONDS)) process.destroyForcibly()
        dir.toFile().deleteRecursively()
    }
}

/** [FieldSync.open] from a test thread. */
fun openBlocking(
    databasePath: String,
    serverUrl: String,
    token: String,
    pageSize: Int = 1000,
    tlsRoots: TlsRoots? = null,
    tlsExtraRootsPem: String? = null,
    encryptionKey: ByteArray? = null,
): FieldSync = kotlinx.coroutines.runBlocking {
    FieldSync.open(databasePath, serverUrl, token, pageSize, tlsRoots, tlsExtraRootsPem, encryptionKey = encryptionKey)
}
