package dev.fieldsync.android

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.objectweb.asm.ClassReader
import org.objectweb.asm.ClassVisitor
import org.objectweb.asm.MethodVisitor
import org.objectweb.asm.Opcodes
import java.io.File
import java.util.zip.ZipFile

/**
 * The shell runs on the library's minSdk (24): every framework class,
 * method and field its compiled code uses exists in Android 7.0's framework
 * (Robolectric's SDK 24 android-all jar), except in the nested `ApiNN`
 * objects, which the code reaches only behind an SDK_INT check (as Android
 * Lint's NewApi check would say). The Robolectric tests at SDK 24 run the
 * main paths; this covers every line.
 */
class MinSdkApiTest {
    private val base = System.getProperty("fieldsync.android.dir")?.let(::File) ?: File(".")
    private val sdk24 = ZipFile(File(base, "target/robolectric-deps/android-all-instrumented-7.0.0_r1-robolectric-r1-i7.jar"))
    private val ours = File(base, "target/classes/dev/fieldsync/android")

    private class Members(val superName: String?, val interfaces: List<String>, val members: Set<String>)

    private val cache = HashMap<String, Members?>()

    /** A framework class of SDK 24, or one of ours: its super types and members. */
    private fun members(name: String): Members? = cache.getOrPut(name) {
        val bytes = sdk24.getEntry("$name.class")?.let { sdk24.getInputStream(it).readBytes() }
            ?: File(ours.parentFile.parentFile.parentFile, "$name.class").takeIf { it.isFile }?.readBytes()
            ?: return@getOrPut null
        val found = HashSet<String>()
        var superName: String? = null
        var interfaces = emptyList<String>()
        ClassReader(bytes).accept(object : ClassVisitor(Opcodes.ASM9) {
            override fun visit(v: Int, a: Int, n: String, s: String?, sup: String?, ifs: Array<out String>?) {
                superName = sup
                interfaces = ifs?.toList() ?: emptyList()
            }

            override fun visitMethod(a: Int, n: String, d: String, s: String?, e: Array<out String>?): MethodVisitor? {
                found += n + d
                return null
            }

            override fun visitField(a: Int, n: String, d: String, s: String?, v: Any?): org.objectweb.asm.FieldVisitor? {
                found += "$n:$d"
                return null
            }
        }, ClassReader.SKIP_CODE)
        Members(superName, interfaces, found)
    }

    /**
     * True when [member] is declared by [owner] or, but for a constructor, by
     * a super type at SDK 24 (a JDK super type is asked by reflection).
     */
    private fun resolves(owner: String, member: String): Boolean {
        if (!owner.startsWith("android/") && !owner.startsWith("dev/fieldsync/android/")) {
            val name = member.substringBefore('(').substringBefore(':')
            val type = runCatching { Class.forName(owner.replace('/', '.')) }.getOrNull() ?: return false
            return type.methods.any { it.name == name } || type.fields.any { it.name == name } ||
                type.declaredMethods.any { it.name == name }
        }
        val m = members(owner) ?: return false
        if (member in m.members) return true
        if (member.startsWith("<init>")) return false
        return listOfNotNull(m.superName).plus(m.interfaces).any { resolves(it, member) }
    }

    private fun frameworkUses(file: File): List<String> {
        val uses = mutableListOf<String>()
        ClassReader(file.readBytes()).accept(object : ClassVisitor(Opcodes.ASM9) {
            override fun visitMethod(a: Int, n: String, d: String, s: String?, e: Array<out String>?): MethodVisitor =
                object : MethodVisitor(Opcodes.ASM9) {
                    override fun visitMethodInsn(op: Int, owner: String, name: String, desc: String, itf: Boolean) {
                        if (owner.startsWith("android/") || owner.startsWith("dev/fieldsync/android/")) {
                            if (!resolves(owner, name + desc)) uses += "$owner.$name$desc (in $n)"
                        }
                    }

                    override fun visitFieldInsn(op: Int, owner: String, name: String, desc: String) {
                        if (owner.startsWith("android/") && !resolves(owner, "$name:$desc")) uses += "$owner.$name (in $n)"
                    }

                    override fun visitTypeInsn(op: Int, type: String) {
                        if (type.startsWith("android/") && members(type) == null) uses += "$type (in $n)"
                    }
                }
        }, 0)
        return uses
    }

    @Test
    fun `the shell uses no framework API newer than its minSdk outside an ApiNN object`() {
        val classes = ours.listFiles { f -> f.extension == "class" }!!.toList()
        assertTrue(classes.any { it.name == "SyncNotifications.class" }, "the compiled shell was found in $ours")
        val guarded = classes.filter { Regex("""\${'$'}Api\d+""").containsMatchIn(it.name) }
        assertTrue(guarded.isNotEmpty(), "the API 26 calls were found")
        // Proof the check sees a newer API: the guarded object's calls do not exist at SDK 24.
        assertTrue(guarded.flatMap(::frameworkUses).any { it.contains("NotificationChannel") })
        val unguarded = (classes - guarded.toSet()).flatMap { f -> frameworkUses(f).map { "${f.name}: $it" } }
        assertEquals(emptyList<String>(), unguarded, "framework API newer than SDK 24")
    }
}
