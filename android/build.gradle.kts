// The fieldsync Android library (AAR) for app developers.
//
// `./gradlew assembleRelease` (needs the Android SDK + NDK, rustup targets
// aarch64-linux-android, armv7-linux-androideabi, x86_64-linux-android,
// i686-linux-android, and `cargo install cargo-ndk`):
//   1. cargo-ndk builds libfieldsync_ffi.so of the bindings crate for the four
//      Android ABIs into build/rustJniLibs/<abi>/;
//   2. uniffi-bindgen generates the Kotlin bindings from the arm64 library;
//   3. the AAR packs the .so files, the generated Kotlin, the facade
//      (src/main/kotlin) and the Android glue (src/android/kotlin).
// Not run on the development machines (no Android SDK there); the JVM build
// in pom.xml compiles the same generated Kotlin and facade and tests them.

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
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    // UniFFI's Kotlin needs JNA (the AAR flavour carries the Android natives).
    implementation("net.java.dev.jna:jna:5.19.1@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.11.0")
    implementation("androidx.work:work-runtime-ktx:2.10.0")
    implementation("androidx.lifecycle:lifecycle-process:2.8.7")
    implementation("androidx.core:core-ktx:1.15.0")
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
