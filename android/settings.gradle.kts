// Gradle build of the fieldsync Android library, for app developers.
// (The JVM build that runs in the test command is pom.xml.)
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "fieldsync-android"
