// The seed's JavaScript client example, as written (Stratum over WebSocket at /stratum),
// plus a main that uses it against a proxy's HTTP port:
//     node examples/javascript/stratum_client.mjs 127.0.0.1 9090 alice.browser
// Needs a global WebSocket (Node >= 22, or Node 20 with --experimental-websocket).

class StratumClient {
    constructor(host, port) {
        this.host = host;
        this.port = port;
        this.socket = null;
        this.nextId = 1;
    }

    connect() {
        return new Promise((resolve, reject) => {
            this.socket = new WebSocket(`ws://${this.host}:${this.port}/stratum`);

            this.socket.onopen = () => resolve();
            this.socket.onerror = (error) => reject(error);
        });
    }

    async subscribe(userAgent = 'js-client/1.0') {
        const request = {
            id: this.nextId++,
            method: 'mining.subscribe',
            params: [userAgent]
        };

        return this.sendRequest(request);
    }

    async authorize(username, password = '') {
        const request = {
            id: this.nextId++,
            method: 'mining.authorize',
            params: [username, password]
        };

        return this.sendRequest(request);
    }

    sendRequest(request) {
        return new Promise((resolve, reject) => {
            const handler = (event) => {
                const response = JSON.parse(event.data);
                if (response.id === request.id) {
                    this.socket.removeEventListener('message', handler);
                    if (response.error) {
                        reject(response.error);
                    } else {
                        resolve(response.result);
                    }
                }
            };

            this.socket.addEventListener('message', handler);
            this.socket.send(JSON.stringify(request));
        });
    }
}

const [host, port, worker = 'js.example'] = process.argv.slice(2);
const client = new StratumClient(host, Number(port));
await client.connect();
const subscription = await client.subscribe();
const authorized = await client.authorize(worker, 'x');
console.log(JSON.stringify({ subscribe: subscription, authorize: authorized }));
client.socket.close();
process.exit(authorized === true ? 0 : 1);
