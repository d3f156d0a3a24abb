import WeftCore

/// The services of the mesh as the data path needs them: virtual IPs, ports and endpoints.
/// Pure value; the agent rebuilds it whenever a workload comes or goes and publishes it to
/// a ServiceDirectory. Virtual IPs are allocated once per service and kept for the agent's
/// lifetime, so a name keeps resolving to the same address while endpoints change.
public struct ServiceCatalog: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var key: ServiceKey
        public var vip: IPAddress
        public var vip6: IPAddress?
        public var ports: [PortMapping]
        public var endpoints: [ServiceEndpoint]
    }

    public let vipRange: CIDR
    public let vip6Prefix: CIDR?
    public private(set) var entries: [ServiceKey: Entry] = [:]
    private var byVIP: [IPAddress: ServiceKey] = [:]
    private var nextVIP: UInt32

    public init(vipRange: CIDR, vip6Prefix: CIDR?) throws {
        guard let network = vipRange.ipv4Network, vipRange.prefixLength <= 30 else {
            throw WeftError(.invalidArgument, "service CIDR \(vipRange): must be an IPv4 block of /30 or larger")
        }
        self.vipRange = vipRange
        self.vip6Prefix = vip6Prefix
        self.nextVIP = network + 1
    }

    /// Rebuilds the endpoint sets from the attached workloads, allocating a VIP to any
    /// service seen for the first time. Services whose endpoints all left keep their VIP.
    public mutating func rebuild(from workloads: [WorkloadSpec]) throws {
        var endpoints: [ServiceKey: [ServiceEndpoint]] = [:]
        var ports: [ServiceKey: [PortMapping]] = [:]
        for w in workloads.sorted(by: { $0.name < $1.name }) {
            let key = w.serviceKey
            if entries[key] == nil { try allocate(key) }
            if let ip = w.podIP {
                endpoints[key, default: []].append(ServiceEndpoint(workload: w.name, ip: ip, ipv6: w.podIPv6,
                                                                   ports: w.ports, labels: w.labels))
            }
            for p in w.ports where !(ports[key, default: []].contains { $0.port == p.port }) {
                ports[key, default: []].append(p)
            }
        }
        for key in entries.keys {
            entries[key]!.endpoints = endpoints[key] ?? []
            if let p = ports[key] { entries[key]!.ports = p.sorted { $0.port < $1.port } }
        }
    }

    /// Every service's VIP, for the state directory: VIPs must survive agent restarts, or a
    /// caller (or a DNS cache) holding one would reach another service.
    public var allocations: [ServiceKey: IPAddress] { entries.mapValues(\.vip) }

    /// Restores allocations from a previous run (before any rebuild). Addresses outside the
    /// range or taken twice are skipped; the allocator continues after the highest.
    public mutating func restore(_ saved: [ServiceKey: IPAddress]) {
        for (key, vip) in saved.sorted(by: { $0.key < $1.key }) where entries[key] == nil {
            guard vipRange.contains(vip), byVIP[vip] == nil, case .v4(let v) = vip else { continue }
            let vip6 = vip6Prefix.flatMap { Self.embed(vip, in: $0) }
            entries[key] = Entry(key: key, vip: vip, vip6: vip6, ports: [], endpoints: [])
            byVIP[vip] = key
            if let vip6 { byVIP[vip6] = key }
            nextVIP = max(nextVIP, v + 1)
        }
    }

    private mutating func allocate(_ key: ServiceKey) throws {
        let size = UInt32(1) << UInt32(32 - vipRange.prefixLength)
        let last = vipRange.ipv4Network! + size - 2
        guard nextVIP <= last else {
            throw WeftError(.exhausted, "service CIDR \(vipRange) is exhausted; cannot give \(key) a virtual IP")
        }
        let vip = IPAddress.v4(nextVIP)
        nextVIP += 1
        let vip6 = vip6Prefix.flatMap { Self.embed(vip, in: $0) }
        entries[key] = Entry(key: key, vip: vip, vip6: vip6, ports: [], endpoints: [])
        byVIP[vip] = key
        if let vip6 { byVIP[vip6] = key }
    }

    static func embed(_ v4: IPAddress, in prefix: CIDR) -> IPAddress? {
        guard case .v4(let host) = v4, prefix.family == .v6, prefix.prefixLength <= 96 else { return nil }
        var b = prefix.address.bytes
        b[12] = UInt8(host >> 24); b[13] = UInt8(host >> 16 & 0xff); b[14] = UInt8(host >> 8 & 0xff); b[15] = UInt8(host & 0xff)
        return .v6(b)
    }

    /// The service behind a fully qualified mesh host (name.namespace.svc.cluster.local).
    public func service(fqdn: String) -> Entry? {
        let suffix = ".svc.cluster.local"
        guard fqdn.hasSuffix(suffix) else { return nil }
        let parts = fqdn.dropLast(suffix.count).split(separator: ".")
        guard parts.count == 2 else { return nil }
        return service(named: String(parts[0]), namespace: String(parts[1]))
    }

    /// The service called `name` in `namespace`, if both are valid names and it exists.
    public func service(named name: String, namespace: String) -> Entry? {
        guard let n = try? ServiceName(name), let ns = try? MeshNamespace(namespace) else { return nil }
        return entries[ServiceKey(name: n, namespace: ns)]
    }

    public func service(forVIP ip: IPAddress) -> Entry? {
        byVIP[ip].flatMap { entries[$0] }
    }

    public var statuses: [ServiceStatus] {
        entries.values.sorted { $0.key < $1.key }.map {
            ServiceStatus(key: $0.key, vip: $0.vip, vip6: $0.vip6, ports: $0.ports, endpoints: $0.endpoints)
        }
    }
}

/// Where a captured outbound connection goes once virtual IPs are taken into account.
public enum ServiceResolution: Equatable, Sendable {
    /// Not a virtual IP: connect to the original destination as it is.
    case passthrough
    /// A service endpoint chosen by the load balancer.
    case endpoint(OriginalDestination, service: ServiceKey, workload: String)
    /// The service exists but nothing serves it right now.
    case noEndpoints(ServiceKey)
    /// The service does not declare the dialled port.
    case unknownPort(ServiceKey, UInt16)
}

extension ServiceCatalog.Entry {
    /// Pure: which endpoint address and port a call to `port` on this service reaches, using
    /// the endpoint chosen by `pick` (an index into the live endpoints). A service with no
    /// declared ports passes the port through; otherwise the port must be declared and each
    /// endpoint's own mapping gives its target port. IPv6 callers reach IPv6 endpoints when
    /// they have one.
    public func resolve(port: UInt16, family: IPFamily, labels: [String: String]? = nil, pick: (Int) -> Int) -> ServiceResolution {
        let endpoints = labels.map { wanted in self.endpoints.filter { e in wanted.allSatisfy { e.labels[$0.key] == $0.value } } } ?? self.endpoints
        guard !endpoints.isEmpty else { return .noEndpoints(key) }
        if !ports.isEmpty && !ports.contains(where: { $0.port == port }) { return .unknownPort(key, port) }
        let chosen = endpoints[pick(endpoints.count) % endpoints.count]
        let target = chosen.ports.first { $0.port == port }?.targetPort ?? port
        let ip = family == .v6 ? (chosen.ipv6 ?? chosen.ip) : chosen.ip
        return .endpoint(OriginalDestination(ip: ip, port: target), service: key, workload: chosen.workload)
    }
}
