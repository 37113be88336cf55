// The control protocol: one JSON object per line each way. Requests are decoded here; answers
// are `{"id":..,"ok":true,...}` or `{"id":..,"ok":false,"error":".."}`. Shared by tcpopsd and
// tcpopsctl so both sides agree on every name.
import FoundationEssentials

public enum ControlProtocol {
    /// Longest request line accepted.
    public static let maxLine = 64 * 1024
    public static let commands = ["list", "alive", "state", "keepalive-enable", "keepalive-disable", "lifetime",
                                  "closed-event", "conid", "send", "close", "events", "stats"]
    public static let defaultSocket = "/run/tcpopsd/control.sock"
}

public struct ControlRequest: Codable, Sendable {
    public var id: Int64?
    public var cmd: String
    public var conid: UInt64?
    public var listener: String?
    public var idle: Int?
    public var count: Int?
    public var interval: Int?
    public var seconds: Double?
    public var host: String?
    public var port: Int?
    public var all: Bool?
    /// send: the bytes, base64.
    public var data: String?
    public var reset: Bool?
    public var follow: Bool?

    public init(cmd: String) { self.cmd = cmd }

    public enum DecodeFailure: Error { case message(String, id: Int64?) }

    /// Decodes one request line; the failure says what is wrong (and the id, if it could be read).
    public static func decode(_ line: [UInt8]) -> Result<ControlRequest, DecodeFailure> {
        let data = Data(line)
        let decoder = JSONDecoder()
        do {
            return .success(try decoder.decode(ControlRequest.self, from: data))
        } catch let DecodingError.typeMismatch(type, ctx) {
            return .failure(.message("wrong type for '\(path(ctx))': expected \(typeName(type))", id: id(of: data)))
        } catch let DecodingError.keyNotFound(key, _) {
            return .failure(.message("missing '\(key.stringValue)'", id: id(of: data)))
        } catch let DecodingError.valueNotFound(type, ctx) {
            return .failure(.message("'\(path(ctx))' is null, expected \(typeName(type))", id: id(of: data)))
        } catch let DecodingError.dataCorrupted(ctx) {
            let p = path(ctx)
            return .failure(.message(p.isEmpty ? "malformed JSON" : "bad value for '\(p)'", id: id(of: data)))
        } catch {
            return .failure(.message("malformed request", id: id(of: data)))
        }
    }

    private struct OnlyID: Decodable { var id: Int64? }

    private static func id(of data: Data) -> Int64? { (try? JSONDecoder().decode(OnlyID.self, from: data))?.id }

    private static func path(_ ctx: DecodingError.Context) -> String { ctx.codingPath.map(\.stringValue).joined(separator: ".") }

    private static func typeName(_ t: Any.Type) -> String {
        switch t {
        case is String.Type: return "a string"
        case is Bool.Type: return "true or false"
        case is Double.Type: return "a number"
        default: return "an integer"
        }
    }

    /// The request as a line (tcpopsctl).
    public func line() -> [UInt8] {
        let encoder = JSONEncoder()
        var bytes = Array((try? encoder.encode(self)) ?? Data("{}".utf8))
        bytes.append(10)
        return bytes
    }
}

public enum ControlAnswer {
    public static func ok(_ id: Int64?, _ fields: [(String, JSON)]) -> String {
        JSON.object([("id", id.map { .int($0) } ?? .null), ("ok", .bool(true))] + fields).text
    }

    public static func error(_ id: Int64?, _ message: String) -> String {
        JSON.object([("id", id.map { .int($0) } ?? .null), ("ok", .bool(false)), ("error", .string(message))]).text
    }
}
