package bench;

import com.google.gson.JsonParser;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;
import org.eclipse.californium.core.CoapResource;
import org.eclipse.californium.core.CoapServer;
import org.eclipse.californium.core.coap.CoAP.ResponseCode;
import org.eclipse.californium.core.config.CoapConfig;
import org.eclipse.californium.core.network.CoapEndpoint;
import org.eclipse.californium.core.server.resources.CoapExchange;
import org.eclipse.californium.elements.config.Configuration;
import org.eclipse.californium.elements.config.UdpConfig;
import org.eclipse.californium.scandium.DTLSConnector;
import org.eclipse.californium.scandium.config.DtlsConfig;
import org.eclipse.californium.scandium.config.DtlsConfig.DtlsRole;
import org.eclipse.californium.scandium.config.DtlsConnectorConfig;
import org.eclipse.californium.scandium.dtls.cipher.CipherSuite;
import org.eclipse.californium.scandium.dtls.pskstore.AdvancedMultiPskStore;

/**
 * The Californium peer of bench/loadtest.py: POST /events parses the JSON body and
 * answers 2.01 (4.00 when it is not JSON); GET /health answers 2.05. Configured for
 * throughput as bench/peers/README.md explains: a 4 MiB UDP receive buffer (what the
 * collector asks for), one protocol-stage thread per available core (Californium's
 * default, set explicitly), and a deduplicator bounded per peer whose entries expire
 * after 30 s instead of keeping every exchange for EXCHANGE_LIFETIME (247 s), which made
 * the heap grow into multi-second full GCs. No file written; the effective settings go
 * to stderr. Usage: java -jar cf-peer.jar --host H --port P; prints "ready" when serving.
 *
 * <p>With --psk-identity ID (and the key's hex digits in the environment variable
 * CF_PEER_PSK_KEY_HEX, so it is not on the command line) the same server speaks coaps
 * instead, through Californium's DTLS connector (Scandium): DTLS 1.2 with the PSK suites
 * the collector offers (RFC 7252 §9.1.3.1), configured for load as Scandium's DtlsConfig
 * documents it: a 4 MiB receive buffer, one receiver and one connector thread per core.
 */
public final class CfPeer {
    /** The collector's and the echo peer's SO_RCVBUF. */
    private static final int RECEIVE_BUFFER = 4 << 20;
    /** Longer than any retransmission window of the generator (timeout 5 s). */
    private static final int DEDUP_SECONDS = 30;

    private CfPeer() {}

    public static void main(String[] args) {
        String host = "127.0.0.1";
        int port = 5683;
        String identity = null;
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (args[i].equals("--host")) {
                host = args[i + 1];
            } else if (args[i].equals("--port")) {
                port = Integer.parseInt(args[i + 1]);
            } else if (args[i].equals("--psk-identity")) {
                identity = args[i + 1];
            }
        }
        CoapConfig.register();
        UdpConfig.register();
        DtlsConfig.register();
        Configuration config = Configuration.createStandardWithoutFile();
        int cores = Runtime.getRuntime().availableProcessors();
        config.set(UdpConfig.UDP_RECEIVE_BUFFER_SIZE, RECEIVE_BUFFER);
        config.set(CoapConfig.PROTOCOL_STAGE_THREAD_COUNT, cores);
        config.set(CoapConfig.DEDUPLICATOR, CoapConfig.DEDUPLICATOR_PEERS_MARK_AND_SWEEP);
        config.set(CoapConfig.EXCHANGE_LIFETIME, DEDUP_SECONDS, TimeUnit.SECONDS);
        config.set(CoapConfig.MARK_AND_SWEEP_INTERVAL, 5, TimeUnit.SECONDS);
        System.err.println("cf-peer: udp receive buffer " + config.get(UdpConfig.UDP_RECEIVE_BUFFER_SIZE)
            + ", protocol threads " + config.get(CoapConfig.PROTOCOL_STAGE_THREAD_COUNT)
            + ", udp receiver threads " + config.get(UdpConfig.UDP_RECEIVER_THREAD_COUNT)
            + ", udp sender threads " + config.get(UdpConfig.UDP_SENDER_THREAD_COUNT)
            + ", deduplicator " + config.get(CoapConfig.DEDUPLICATOR)
            + " (" + config.get(CoapConfig.PEERS_MARK_AND_SWEEP_MESSAGES) + " per peer, "
            + config.get(CoapConfig.EXCHANGE_LIFETIME, TimeUnit.SECONDS) + " s)"
            + ", max heap " + (Runtime.getRuntime().maxMemory() >> 20) + " MiB");
        CoapServer server = new CoapServer(config);
        CoapEndpoint.Builder builder = new CoapEndpoint.Builder();
        builder.setConfiguration(config);
        if (identity == null) {
            builder.setInetSocketAddress(new InetSocketAddress(host, port));
        } else {
            builder.setConnector(dtlsConnector(config, host, port, identity, cores));
        }
        server.addEndpoint(builder.build());
        server.add(new CoapResource("events") {
            @Override
            public void handlePOST(CoapExchange exchange) {
                try {
                    JsonParser.parseString(
                        new String(exchange.getRequestPayload(), StandardCharsets.UTF_8));
                    exchange.respond(ResponseCode.CREATED);
                } catch (RuntimeException e) {
                    exchange.respond(ResponseCode.BAD_REQUEST, "bad json");
                }
            }
        });
        server.add(new CoapResource("health") {
            @Override
            public void handleGET(CoapExchange exchange) {
                exchange.respond(ResponseCode.CONTENT, "{\"status\":\"ok\"}");
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(server::destroy));
        server.start();
        System.out.println("ready");
        System.out.flush();
    }

    private static DTLSConnector dtlsConnector(
            Configuration config, String host, int port, String identity, int cores) {
        String hex = System.getenv("CF_PEER_PSK_KEY_HEX");
        if (hex == null || hex.isEmpty() || hex.length() % 2 != 0) {
            throw new IllegalArgumentException("--psk-identity needs CF_PEER_PSK_KEY_HEX");
        }
        byte[] key = new byte[hex.length() / 2];
        for (int i = 0; i < key.length; i++) {
            key[i] = (byte) Integer.parseInt(hex.substring(2 * i, 2 * i + 2), 16);
        }
        config.set(DtlsConfig.DTLS_ROLE, DtlsRole.SERVER_ONLY);
        config.set(DtlsConfig.DTLS_CIPHER_SUITES, Arrays.asList(
            CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, CipherSuite.TLS_PSK_WITH_AES_128_CCM));
        config.set(DtlsConfig.DTLS_RECEIVE_BUFFER_SIZE, RECEIVE_BUFFER);
        config.set(DtlsConfig.DTLS_RECEIVER_THREAD_COUNT, cores);
        config.set(DtlsConfig.DTLS_CONNECTOR_THREAD_COUNT, cores);
        config.set(DtlsConfig.DTLS_MAX_CONNECTIONS, 200_000);  // the handshake-rate runs
        System.err.println("cf-peer: coaps (Scandium), dtls receive buffer "
            + config.get(DtlsConfig.DTLS_RECEIVE_BUFFER_SIZE)
            + ", receiver threads " + config.get(DtlsConfig.DTLS_RECEIVER_THREAD_COUNT)
            + ", connector threads " + config.get(DtlsConfig.DTLS_CONNECTOR_THREAD_COUNT)
            + ", cipher suites " + config.get(DtlsConfig.DTLS_CIPHER_SUITES));
        AdvancedMultiPskStore store = new AdvancedMultiPskStore();
        store.setKey(identity, key);
        DtlsConnectorConfig.Builder dtls = DtlsConnectorConfig.builder(config);
        dtls.setAddress(new InetSocketAddress(host, port));
        dtls.setAdvancedPskStore(store);
        return new DTLSConnector(dtls.build());
    }
}
