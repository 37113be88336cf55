// The journal's MESSAGE_ID of each kind of entry tcpopsd writes (`journalctl MESSAGE_ID=...`):
// part of the vocabulary, since an event's kind names its own.

/// Stable MESSAGE_IDs, one per kind of entry (listed in docs/journal.md).
public enum MessageID: String, Sendable {
    case started = "90dcfd40737843098b666014b80b8f07"
    case stopping = "812d3f7d8c0d4a62848b745f217577e2"
    case stopped = "fcd51e0ab813459e80e9ce6c6334e826"
    case configInvalid = "c2988642cde14042b24e0c09ae05f57e"
    case eventClosed = "7f641d49b1064a0b9b5f80daaa86a266"
    case eventReset = "6493216fb804485a9b6bdb453f8e94e3"
    case eventTimeout = "e554ba41c27948819a98480f51c9e580"
    case connectionOpened = "af3d88eb7ca9414d82dd1998e33099a5"
    case connectionClosed = "387290ab5ecf440084a71591be7f39f2"
    case hookFinished = "df9ec5e5f5cb44aa8c634c41acd29588"
    case hookKilled = "9dddb0a9302f42a9958bad7d604c1cb8"
    case hookDropped = "4972cf2fd06641b6ab7ff0bce2a168b8"
    case listener = "1946cf980a2948c588c6c80713ff0189"
}
