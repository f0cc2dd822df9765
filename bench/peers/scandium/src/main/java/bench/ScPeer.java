package bench;

import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import org.eclipse.californium.core.CoapClient;
import org.eclipse.californium.core.CoapResource;
import org.eclipse.californium.core.CoapResponse;
import org.eclipse.californium.core.CoapServer;
import org.eclipse.californium.core.coap.CoAP.ResponseCode;
import org.eclipse.californium.core.coap.MediaTypeRegistry;
import org.eclipse.californium.core.config.CoapConfig;
import org.eclipse.californium.core.network.CoapEndpoint;
import org.eclipse.californium.core.server.resources.CoapExchange;
import org.eclipse.californium.elements.config.Configuration;
import org.eclipse.californium.scandium.DTLSConnector;
import org.eclipse.californium.scandium.config.DtlsConfig;
import org.eclipse.californium.scandium.config.DtlsConfig.DtlsRole;
import org.eclipse.californium.scandium.config.DtlsConnectorConfig;
import org.eclipse.californium.scandium.dtls.cipher.CipherSuite;
import org.eclipse.californium.scandium.dtls.pskstore.AdvancedMultiPskStore;
import org.eclipse.californium.scandium.dtls.pskstore.AdvancedSinglePskStore;

/** A Scandium DTLS 1.2 PSK peer: `client URI ID KEY BODY` or `server PORT ID KEY`. */
public final class ScPeer {
  public static void main(String[] args) throws Exception {
    DtlsConfig.register();
    CoapConfig.register();
    Configuration config = Configuration.createStandardWithoutFile();
    config.set(
        DtlsConfig.DTLS_CIPHER_SUITES,
        Arrays.asList(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, CipherSuite.TLS_PSK_WITH_AES_128_CCM));
    byte[] key = args[3].getBytes(StandardCharsets.UTF_8);
    if (args[0].equals("client")) {
      config.set(DtlsConfig.DTLS_ROLE, DtlsRole.CLIENT_ONLY);
      DtlsConnectorConfig.Builder dtls = DtlsConnectorConfig.builder(config);
      dtls.setAdvancedPskStore(new AdvancedSinglePskStore(args[2], key));
      CoapEndpoint endpoint =
          new CoapEndpoint.Builder()
              .setConfiguration(config)
              .setConnector(new DTLSConnector(dtls.build()))
              .build();
      CoapClient client = new CoapClient(args[1]);
      client.setEndpoint(endpoint);
      client.setTimeout(10_000L);
      CoapResponse response = client.post(args[4], MediaTypeRegistry.APPLICATION_JSON);
      if (response == null) {
        System.out.println("NO RESPONSE");
      } else {
        ResponseCode code = response.getCode();
        System.out.printf("%d.%02d %s%n", code.codeClass, code.codeDetail, response.getResponseText());
      }
      client.shutdown();
      endpoint.destroy();
      return;
    }
    // Server, configured as Californium's docs advise for load: a large receive
    // buffer and one protocol/connector thread per core.
    int cores = Runtime.getRuntime().availableProcessors();
    config.set(DtlsConfig.DTLS_ROLE, DtlsRole.SERVER_ONLY);
    config.set(DtlsConfig.DTLS_RECEIVE_BUFFER_SIZE, 4 * 1024 * 1024);
    config.set(DtlsConfig.DTLS_RECEIVER_THREAD_COUNT, cores);
    config.set(DtlsConfig.DTLS_CONNECTOR_THREAD_COUNT, cores);
    config.set(DtlsConfig.DTLS_MAX_CONNECTIONS, 200_000);
    config.set(CoapConfig.PROTOCOL_STAGE_THREAD_COUNT, cores);
    AdvancedMultiPskStore store = new AdvancedMultiPskStore();
    store.setKey(args[2], key);
    DtlsConnectorConfig.Builder dtls = DtlsConnectorConfig.builder(config);
    dtls.setAddress(new InetSocketAddress("127.0.0.1", Integer.parseInt(args[1])));
    dtls.setAdvancedPskStore(store);
    CoapServer server = new CoapServer(config);
    server.addEndpoint(
        new CoapEndpoint.Builder()
            .setConfiguration(config)
            .setConnector(new DTLSConnector(dtls.build()))
            .build());
    server.add(
        new CoapResource("events") {
          @Override
          public void handlePOST(CoapExchange exchange) {
            exchange.respond(ResponseCode.CREATED);
          }
        });
    server.start();
    System.out.println("serving");
    Thread.currentThread().join();
  }
}
