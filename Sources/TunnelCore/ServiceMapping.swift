/// One `-d` entry: a service id (empty for the single unnamed mapping) and its endpoint.
public struct ServiceMapping: Equatable {
    public var serviceId: String
    public var endpoint: Endpoint

    public init(serviceId: String, endpoint: Endpoint) {
        self.serviceId = serviceId
        self.endpoint = endpoint
    }
}
