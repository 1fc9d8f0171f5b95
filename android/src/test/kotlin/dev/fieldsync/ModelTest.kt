package dev.fieldsync

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * A published change of the server's data model reaches the app: a real
 * server, a new column published through the admin API while the device
 * holds a pending edit, and the app reading the column after its next sync.
 */
class ModelTest {
    @Test
    fun `the app reads a column that a published model change added`() = runBlocking<Unit> {
        TestServer.start().use { server ->
            val tech = server.user("tech-m", "technician")
            val dispatcher = server.user("disp-m", "dispatcher")
            server.seed(listOf("tech-m"), 20)
            openBlocking(server.databasePath("model"), server.url, tech).use { sync ->
                sync.syncNow()
                assertEquals(1L, checkNotNull(sync.offlineProfile()).modelVersion)
                val booking = sync.list("bookings", limit = 1).single()
                sync.put("bookings", booking.id, "notes" to "held before v2")
                assertEquals(1L, sync.pendingUploads())

                // Model v2: bookings gain a gate code; the profile syncs it.
                val model = server.admin("GET", "/v1/admin/model")
                val notes = """{"name":"notes","type":"text"}"""
                check(model.contains(notes)) { "no notes column in $model" }
                val published = server.admin(
                    "PUT", "/v1/admin/model",
                    model.replace(notes, """$notes,{"name":"gate_code","type":"text","default":"none"}"""),
                )
                assertTrue(published.contains("\"version\":2"), published)
                val profile = server.admin("GET", "/v1/admin/profiles/field-service")
                    .substringAfter("\"profile\":").dropLast(1)
                check(profile.contains("\"notes\"]")) { "no notes column in $profile" }
                server.admin(
                    "PUT", "/v1/admin/profiles/field-service",
                    profile.replace("\"notes\"]", "\"notes\",\"gate_code\"]"),
                )
                server.dispatcherPut(dispatcher, "bookings", booking.id, """{"gate_code":"4711"}""")

                val report = sync.syncNow()
                assertTrue(report.profileChanged)
                assertEquals(0L, sync.pendingUploads())
                val after = sync.get("bookings", booking.id)
                assertEquals("4711", after.text("gate_code"))
                assertEquals("held before v2", after.text("notes"))
                val profileNow = checkNotNull(sync.offlineProfile())
                assertEquals(2L, profileNow.modelVersion)
                assertEquals(2L, sync.status().modelVersion)
                assertTrue(
                    profileNow.tables.single { it.name == "bookings" }.columns
                        .any { it.name == "gate_code" && it.kind == ColumnKind.TEXT },
                )
                val onServer = server.record(dispatcher, "bookings", booking.id)
                assertTrue(onServer.contains("held before v2") && onServer.contains("4711"), onServer)
            }
        }
    }
}
