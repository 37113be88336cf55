// Every loop's fd registrations in one process-wide table, indexed by fd. An fd belongs to one loop
// at a time, so each slot is written and read by the loop that owns its fd; what crosses threads
// is only an fd number's reuse: a loop that closed an fd may still hold a stale event for it in
// the batch it is dispatching while another loop registers the number anew. So a slot's
// generation is read and written atomically and compared before anything else is read: a stale
// event's generation is never the new one (generations are unique process-wide), and the handler
// of another loop's slot is never touched.
//
// Why one table: fds are numbered process-wide, so a table per loop spans every fd of the process
// in each loop (two workers holding 9,000 relays each had a 512 KiB table of their own: 116 bytes
// a relay of which 32 were used). The table is reserved once (virtual, MAP_NORESERVE) for the
// most fds the process can ever have; only the pages of fd numbers in use are ever touched.
import CShims
import Synchronization
import TCPOpsPosix

final class FDTable: @unchecked Sendable {
    // @unchecked: see the top of this file (each slot has one owner; generations are atomic).
    struct Slot {
        /// +1 retained handler (nil: free).
        var handler: UnsafeMutableRawPointer?
        /// Nonzero while registered; read across threads (atomically).
        var generation: UInt32
        /// The interest mask, and the parked flag (EventLoop's).
        var bits: UInt32
    }

    static let shared = FDTable()

    let capacity: Int
    private let slots: UnsafeMutablePointer<Slot>
    private let nextGeneration = Atomic<UInt32>(1)

    private init() {
        let most = FileLimit.most()
        let cap = min(max(most, 1024), 1 << 24)
        if let p = Memory.reserve(bytes: cap * MemoryLayout<Slot>.stride) {
            capacity = cap
            slots = p.bindMemory(to: Slot.self, capacity: cap)
        } else {
            // Without a reservation (a tight address-space limit): as many as fit an allocation.
            capacity = cap
            slots = .allocate(capacity: capacity)
            slots.initialize(repeating: Slot(handler: nil, generation: 0, bits: 0), count: capacity)
        }
    }

    /// A generation no registration has now: 1 ..< 2^31 (the top bit is EventLoop's).
    func newGeneration() -> UInt32 {
        while true {
            let g = nextGeneration.wrappingAdd(1, ordering: .relaxed).oldValue & 0x7FFF_FFFF
            if g != 0 { return g }
        }
    }

    /// The slot of `fd` (its owner only; nil past the capacity).
    @inline(__always) func slot(_ fd: Int) -> UnsafeMutablePointer<Slot>? {
        fd >= 0 && fd < capacity ? slots + fd : nil
    }

    private static let generationOffset = MemoryLayout<Slot>.offset(of: \Slot.generation)!

    @inline(__always) private func generationWord(_ s: UnsafeMutablePointer<Slot>) -> UnsafeMutablePointer<UInt32> {
        (UnsafeMutableRawPointer(s) + FDTable.generationOffset).assumingMemoryBound(to: UInt32.self)
    }

    /// The generation of `fd`'s registration as any thread may read it (0: none).
    @inline(__always) func generation(_ fd: Int) -> UInt32 {
        guard fd >= 0 && fd < capacity else { return 0 }
        return tcpops_load_acquire_u32(generationWord(slots + fd))
    }

    /// Fills `fd`'s slot (releasing a handler left there) and publishes its generation last.
    /// The generation is read first: the loop that had this fd number before published its
    /// slot's emptying with it, so what it wrote happens before what this loop writes.
    func fill(_ fd: Int, handler: EventHandler, generation: UInt32, bits: UInt32) {
        let s = slots + fd
        _ = tcpops_load_acquire_u32(generationWord(s))
        if let old = s.pointee.handler { Unmanaged<EventHandler>.fromOpaque(old).release() }
        s.pointee.handler = Unmanaged.passRetained(handler).toOpaque()
        s.pointee.bits = bits
        tcpops_store_release_u32(generationWord(s), generation)
    }

    /// Empties `fd`'s slot, its generation last (published: the next loop to fill the slot reads
    /// it first). Another loop's stale event never matches either generation, so it reads nothing
    /// else of the slot meanwhile.
    func clear(_ fd: Int) {
        let s = slots + fd
        s.pointee.bits = 0
        let old = s.pointee.handler
        s.pointee.handler = nil
        tcpops_store_release_u32(generationWord(s), 0)
        if let old { Unmanaged<EventHandler>.fromOpaque(old).release() }
    }
}
