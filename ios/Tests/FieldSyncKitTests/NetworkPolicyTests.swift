import XCTest
@testable import FieldSyncKit

final class NetworkPolicyTests: XCTestCase {
    func testWifiOnlyRefusesMeteredPaths() {
        XCTAssertFalse(networkAllowsSync(.down, wifiOnly: false))
        XCTAssertTrue(networkAllowsSync(NetworkState(up: true, metered: true), wifiOnly: false))
        XCTAssertFalse(networkAllowsSync(NetworkState(up: true, metered: true), wifiOnly: true))
        XCTAssertTrue(networkAllowsSync(NetworkState(up: true, metered: false), wifiOnly: true))
    }
}
