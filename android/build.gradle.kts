// The fieldsync Android library (AAR) for app developers. It needs no
// AndroidX: the glue in src/android/kotlin uses the framework's own APIs.
//
// NOT RUN on the project's machines (no Android SDK, NDK or Gradle there);
// the test command compiles and tests the same sources with Maven and
// Robolectric (pom.xml). `gradle assembleRelease` needs the Android SDK and
// NDK, the rustup targets of the four ABIs and `cargo install cargo-ndk`:
//   1. cargo-ndk builds libfieldsync_ffi.so for the four ABIs;
//   2. uniffi-bindgen generates the Kotlin bindings from the arm64 library;
//   3. the AAR packs the .so files, the generated Kotlin, the facade
//      (src/main/kotlin), the glue (src/android/kotlin) and the manifest.

import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.4.21"
}

val repoRoot = rootDir.parentFile
val rustJniLibs = layout.buildDirectory.dir("rustJniLibs")
val generatedKotlin = layout.buildDirectory.dir("generated/uniffi/kotlin")
val androidAbis = listOf("arm64-v8a", "armeabi-v7a", "x86_64", "x86")
val cargoProfile = if (providers.gradleProperty("fieldsync.debugRust").isPresent) "debug" else "release"

android {
    namespace = "dev.fieldsync"
    compileSdk = 35
    defaultConfig {
        minSdk = 24
        ndk { abiFilters += androidAbis }
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].apply {
        java.srcDirs("src/main/kotlin", "src/android/kotlin", generatedKotlin)
        jniLibs.srcDirs(rustJniLibs)
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    compilerOptions { jvmTarget = JvmTarget.JVM_17 }
}

dependencies {
    // UniFFI's Kotlin needs JNA (the AAR flavour carries the Android natives).
    implementation("net.java.dev.jna:jna:5.19.1@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.11.0")
}

// 1. The core for every Android ABI, with cargo-ndk.
val cargoNdk by tasks.registering(Exec::class) {
    workingDir = repoRoot
    val args = mutableListOf("cargo", "ndk", "--platform", "24", "--output-dir", rustJniLibs.get().asFile.path)
    androidAbis.forEach { args += listOf("--target", it) }
    args += listOf("build", "--locked", "-p", "fieldsync-bindings")
    if (cargoProfile == "release") args += "--release"
    commandLine(args)
}

// 2. Kotlin bindings generated from the built library (library mode).
val uniffiBindgen by tasks.registering(Exec::class) {
    dependsOn(cargoNdk)
    workingDir = repoRoot
    val lib = "target/aarch64-linux-android/$cargoProfile/libfieldsync_ffi.so"
    commandLine(
        "cargo", "run", "--locked", "-p", "uniffi-bindgen", "--",
        "generate", lib, "--language", "kotlin", "--out-dir", generatedKotlin.get().asFile.path, "--no-format",
    )
}

tasks.named("preBuild") { dependsOn(uniffiBindgen) }
