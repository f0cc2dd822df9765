package bench;

import com.google.gson.JsonParser;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import org.eclipse.californium.core.CoapResource;
import org.eclipse.californium.core.CoapServer;
import org.eclipse.californium.core.coap.CoAP.ResponseCode;
import org.eclipse.californium.core.config.CoapConfig;
import org.eclipse.californium.core.network.CoapEndpoint;
import org.eclipse.californium.core.server.resources.CoapExchange;
import org.eclipse.californium.elements.config.Configuration;
import org.eclipse.californium.elements.config.UdpConfig;

/**
 * The Californium peer of bench/loadtest.py: POST /events parses the JSON body and
 * answers 2.01 (4.00 when it is not JSON); GET /health answers 2.05. Default
 * Californium configuration (its own deduplicator and thread pools), no file written.
 * Usage: java -jar cf-peer.jar --host H --port P; prints "ready" when serving.
 */
public final class CfPeer {
    private CfPeer() {}

    public static void main(String[] args) {
        String host = "127.0.0.1";
        int port = 5683;
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (args[i].equals("--host")) {
                host = args[i + 1];
            } else if (args[i].equals("--port")) {
                port = Integer.parseInt(args[i + 1]);
            }
        }
        CoapConfig.register();
        UdpConfig.register();
        Configuration config = Configuration.createStandardWithoutFile();
        CoapServer server = new CoapServer(config);
        CoapEndpoint.Builder builder = new CoapEndpoint.Builder();
        builder.setConfiguration(config);
        builder.setInetSocketAddress(new InetSocketAddress(host, port));
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
}
