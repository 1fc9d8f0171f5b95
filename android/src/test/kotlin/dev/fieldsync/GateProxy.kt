package dev.fieldsync

import java.io.InputStream
import java.io.OutputStream
import java.net.InetAddress
import java.net.ServerSocket
import java.net.Socket
import java.net.URI
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger

/**
 * A TCP relay on loopback in front of a [TestServer] that can hold the
 * device's pull requests: after [holdPullsAfter] lets `n` through, the next
 * one waits at the gate until [release], so a test finds a sync running at
 * a point it chose, with no timing involved. [held] counts down when a
 * request is held (proof the gate was reached).
 */
class GateProxy(serverUrl: String) : AutoCloseable {
    private val target = URI.create(serverUrl)
    private val listener = ServerSocket(0, 50, InetAddress.getLoopbackAddress())
    private val sockets = java.util.Collections.synchronizedList(mutableListOf<Socket>())
    private val pulls = AtomicInteger()

    @Volatile
    private var allowed = Int.MAX_VALUE

    @Volatile
    private var gate = CountDownLatch(0)

    /** Counts down when a pull request is held at the gate. */
    @Volatile
    var held = CountDownLatch(1)
        private set

    /** The URL the device uses. */
    val url = "http://127.0.0.1:${listener.localPort}"

    /** Pull requests seen so far. */
    val pullsSeen: Int get() = pulls.get()

    init {
        Thread {
            while (!listener.isClosed) {
                val client = try {
                    listener.accept()
                } catch (e: java.io.IOException) {
                    break
                }
                val server = Socket(target.host, target.port)
                sockets += client
                sockets += server
                pump(client.getInputStream(), server.getOutputStream(), inspect = true)
                pump(server.getInputStream(), client.getOutputStream(), inspect = false)
            }
        }.apply { isDaemon = true }.start()
    }

    /** Lets [n] more pull requests through, then holds the next ones until [release]. */
    fun holdPullsAfter(n: Int) {
        held = CountDownLatch(1)
        gate = CountDownLatch(1)
        allowed = pulls.get() + n
    }

    /** Opens the gate: held and later requests go through. */
    fun release() {
        allowed = Int.MAX_VALUE
        gate.countDown()
    }

    /** Waits until a request is held; false if none was within [seconds]. */
    fun awaitHeld(seconds: Long = 60): Boolean = held.await(seconds, TimeUnit.SECONDS)

    private fun pump(from: InputStream, to: OutputStream, inspect: Boolean) {
        Thread {
            val buffer = ByteArray(64 * 1024)
            try {
                while (true) {
                    val n = from.read(buffer)
                    if (n < 0) break
                    if (inspect && String(buffer, 0, minOf(n, 64), Charsets.ISO_8859_1).startsWith("GET /v1/sync/pull")) {
                        if (pulls.incrementAndGet() > allowed) {
                            held.countDown()
                            gate.await()
                        }
                    }
                    to.write(buffer, 0, n)
                    to.flush()
                }
            } catch (e: java.io.IOException) {
                // The other side closed.
            } finally {
                runCatching { to.close() }
            }
        }.apply { isDaemon = true }.start()
    }

    override fun close() {
        release()
        listener.close()
        synchronized(sockets) { sockets.forEach { runCatching { it.close() } } }
    }
}
